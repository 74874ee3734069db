import os
import socket
import subprocess
import tempfile
import time

import pytest
from qs_ports import free_port  # noqa: E402  (Tests/ is on the path: Tests/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))




@pytest.fixture(scope="module")
def fakekt():
    """A real fakekt process on a free loopback port, with an update log."""
    bin_dir = os.environ.get("QS_BIN_DIR", os.path.join(ROOT, ".build", "debug"))
    binary = os.path.join(bin_dir, "fakekt")
    port = free_port()
    ulog = tempfile.mkdtemp(prefix="fakekt-ulog-")
    proc = subprocess.Popen(
        [binary, "-host", "127.0.0.1", "-port", str(port), "-sid", "1", "-ulog", ulog,
         "-ulim", "1m", "-le", "main.kch", "aux.kct"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError("fakekt did not start: %r" % proc.stderr.read())
            time.sleep(0.02)
    yield {"port": port, "ulog": ulog}
    proc.terminate()
    assert proc.wait(timeout=10) == 0
