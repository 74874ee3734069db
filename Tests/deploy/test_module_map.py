"""The package's shape: every import declared, no command line or exporter in the
libraries, and docs/architecture.md's module table current (scripts/module_map.py).

    python3 -m pytest -q Tests/deploy/test_module_map.py
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_module_map_holds():
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "module_map.py"), "--check"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
