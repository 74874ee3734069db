"""fakekt's ktserver-style command line."""
import os
import signal
import socket
import subprocess
import tempfile

from conftest import ROOT
from qs_ports import port as listener_port, start, stop, wait_ready

BIN = os.path.join(os.environ.get("QS_BIN_DIR", os.path.join(ROOT, ".build", "debug")), "fakekt")


def test_unsupported_ktserver_option_is_refused():
    out = subprocess.run([BIN, "-dmn", "main.kch"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 64
    assert "-dmn is not supported" in out.stderr


def test_environment_fallbacks_pid_file_and_sigterm():
    work = tempfile.mkdtemp()
    pid_file = os.path.join(work, "fakekt.pid")
    ready_file = os.path.join(work, "ready.json")
    env = dict(os.environ, QS_FAKEKT_PORT="0", QS_FAKEKT_PID=pid_file, QS_FAKEKT_READY_FILE=ready_file,
               QS_FAKEKT_LE="1")
    proc = subprocess.Popen([BIN, "%"], env=env)
    try:
        port = listener_port(wait_ready(ready_file, proc), "kt")
        with open(pid_file) as f:
            assert int(f.read()) == proc.pid
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /rpc/status HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        reply = s.recv(4096).decode()
        assert reply.startswith("HTTP/1.1 200 OK\r\n")
        assert "path\t%" in reply
        s.close()
    finally:
        assert stop(proc, signal.SIGTERM) == 0
    assert not os.path.exists(pid_file)
    assert not os.path.exists(ready_file)


def test_sigint_exits_cleanly():
    proc, _ = start([BIN, "-port", "0", "-lz", "*"], ready_flag="-ready-file")
    assert stop(proc, signal.SIGINT) == 0
