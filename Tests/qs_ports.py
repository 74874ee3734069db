"""Helpers shared by the Python test suites (Tests/interop, Tests/deploy): daemons start on
port 0 and tell their real addresses in their ready file (--ready-file, fakekt -ready-file),
so no suite guesses a free port."""
import json
import os
import subprocess
import tempfile
import time


def start(cmd, ready_flag="--ready-file", timeout=20, **popen_kwargs):
    """Starts `cmd` with a ready file and waits until the daemon has written it. Returns the
    process and its listeners as {name: [address, ...]} (a name with a TCP and a Unix
    endpoint has both). Raises with the daemon's exit status if it stops first."""
    path = os.path.join(tempfile.mkdtemp(prefix="qs-ready-"), "ready.json")
    proc = subprocess.Popen(list(cmd) + [ready_flag, path], **popen_kwargs)
    return proc, wait_ready(path, proc, timeout)


def wait_ready(path, proc, timeout=20):
    """Waits until `proc` has written its ready file `path`; returns its listeners."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise RuntimeError("%s exited with %s before it was ready" % (proc.args[0], proc.returncode))
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("%s wrote no ready file within %s s" % (proc.args[0], timeout))
        time.sleep(0.02)
    with open(path) as f:
        entries = json.load(f)["listeners"]
    listeners = {}
    for entry in entries:
        listeners.setdefault(entry["name"], []).append(entry["address"])
    return listeners


def port(listeners, name):
    """The TCP port of listener `name` (write, memcached, kt-http, admin, kt)."""
    for address in listeners.get(name, []):
        if not address.startswith("unix:"):
            return int(address.rsplit(":", 1)[1])
    raise KeyError("no TCP listener %r among %r" % (name, listeners))
