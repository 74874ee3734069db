"""fakekt's ktserver-style command line."""
import os
import signal
import socket
import subprocess
import tempfile
import time

from conftest import ROOT, free_port

BIN = os.path.join(os.environ.get("QS_BIN_DIR", os.path.join(ROOT, ".build", "debug")), "fakekt")


def wait_port(port, proc):
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.02)
    raise AssertionError("fakekt did not listen on %d" % port)


def test_unsupported_ktserver_option_is_refused():
    out = subprocess.run([BIN, "-dmn", "main.kch"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 64
    assert "-dmn is not supported" in out.stderr


def test_environment_fallbacks_pid_file_and_sigterm():
    port = free_port()
    pid_file = os.path.join(tempfile.mkdtemp(), "fakekt.pid")
    env = dict(os.environ, QS_FAKEKT_PORT=str(port), QS_FAKEKT_PID=pid_file, QS_FAKEKT_LE="1")
    proc = subprocess.Popen([BIN, "%"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, proc)
        with open(pid_file) as f:
            assert int(f.read()) == proc.pid
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /rpc/status HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        reply = s.recv(4096).decode()
        assert reply.startswith("HTTP/1.1 200 OK\r\n")
        assert "path\t%" in reply
        s.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert not os.path.exists(pid_file)


def test_sigint_exits_cleanly():
    port = free_port()
    proc = subprocess.Popen([BIN, "-port", str(port), "-lz", "*"], stderr=subprocess.PIPE, text=True)
    wait_port(port, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0
