import os
import subprocess
import tempfile

import pytest
from qs_ports import port as listener_port, start  # noqa: E402  (Tests/ is on the path: Tests/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))




@pytest.fixture(scope="module")
def fakekt():
    """A real fakekt process on a loopback port it picks (-port 0), with an update log."""
    bin_dir = os.environ.get("QS_BIN_DIR", os.path.join(ROOT, ".build", "debug"))
    binary = os.path.join(bin_dir, "fakekt")
    ulog = tempfile.mkdtemp(prefix="fakekt-ulog-")
    proc, listeners = start(
        [binary, "-host", "127.0.0.1", "-port", "0", "-sid", "1", "-ulog", ulog,
         "-ulim", "1m", "-le", "main.kch", "aux.kct"],
        ready_flag="-ready-file", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    port = listener_port(listeners, "kt")
    yield {"port": port, "ulog": ulog}
    proc.terminate()
    assert proc.wait(timeout=10) == 0
