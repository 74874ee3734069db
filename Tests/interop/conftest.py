import os
import shutil
import subprocess
import tempfile

import pytest
from qs_ports import port as listener_port, start, stop  # noqa: E402  (Tests/ is on the path: Tests/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def fakekt():
    """A real fakekt process on a loopback port it picks (-port 0), with an update log; its
    log is a file (a pipe nobody reads could fill and stall it)."""
    bin_dir = os.environ.get("QS_BIN_DIR", os.path.join(ROOT, ".build", "debug"))
    binary = os.path.join(bin_dir, "fakekt")
    work = tempfile.mkdtemp(prefix="fakekt-")
    ulog = os.path.join(work, "ulog")
    os.mkdir(ulog)
    try:
        with open(os.path.join(work, "fakekt.log"), "w") as log:
            proc, listeners = start(
                [binary, "-host", "127.0.0.1", "-port", "0", "-sid", "1", "-ulog", ulog,
                 "-ulim", "1m", "-le", "main.kch", "aux.kct"],
                ready_flag="-ready-file", stdout=subprocess.DEVNULL, stderr=log)
        try:
            yield {"port": listener_port(listeners, "kt"), "ulog": ulog}
        finally:
            assert stop(proc) == 0, read(os.path.join(work, "fakekt.log"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def read(path):
    with open(path) as f:
        return f.read()
