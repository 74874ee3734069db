"""Helpers shared by the Python test suites (Tests/interop, Tests/deploy): daemons start on
port 0 and tell their real addresses in their ready file (--ready-file, fakekt -ready-file),
so no suite guesses a free port; every process a test starts is stopped and reaped, whatever
happens (`stop`)."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time


def start(cmd, ready_flag="--ready-file", timeout=20, **popen_kwargs):
    """Starts `cmd` with a ready file and waits until the daemon has written it. Returns the
    process and its listeners as {name: [address, ...]} (a name with a TCP and a Unix
    endpoint has both). Raises with the daemon's exit status if it stops first; a daemon
    that does not get ready is killed and reaped before the error is raised."""
    ready_dir = tempfile.mkdtemp(prefix="qs-ready-")
    path = os.path.join(ready_dir, "ready.json")
    proc = subprocess.Popen(list(cmd) + [ready_flag, path], **popen_kwargs)
    try:
        return proc, wait_ready(path, proc, timeout)
    except BaseException:
        stop(proc, signal.SIGKILL)
        raise
    finally:
        shutil.rmtree(ready_dir, ignore_errors=True)


def wait_ready(path, proc, timeout=20):
    """Waits until `proc` has written its ready file `path`; returns its listeners. Raises
    when `proc` exits first or `timeout` passes (stopping `proc` is the caller's)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise RuntimeError("%s exited with %s before it was ready" % (proc.args[0], proc.returncode))
        if time.monotonic() > deadline:
            raise RuntimeError("%s wrote no ready file within %s s" % (proc.args[0], timeout))
        time.sleep(0.02)
    with open(path) as f:
        entries = json.load(f)["listeners"]
    listeners = {}
    for entry in entries:
        listeners.setdefault(entry["name"], []).append(entry["address"])
    return listeners


def stop(proc, sig=signal.SIGTERM, timeout=20):
    """Sends `sig` to `proc` (if it still runs) and waits for its exit; one that has not
    exited within `timeout` is killed and reaped, then an error says so. Returns the exit
    status."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError("%s did not exit within %s s of signal %s; killed" % (proc.args[0], timeout, sig))


def stop_all(procs, sig=signal.SIGTERM, timeout=20):
    """Stops every process of `procs` in that order with `stop`, each one reaped even when
    another fails; returns what went wrong (a non-zero exit, a timeout), empty when every
    one exited 0."""
    problems = []
    for proc in procs:
        try:
            code = stop(proc, sig, timeout)
            if code != 0:
                problems.append("%s exited with %s" % (proc.args[0], code))
        except RuntimeError as error:
            problems.append(str(error))
    return problems


def port(listeners, name):
    """The TCP port of listener `name` (write, memcached, kt-http, admin, kt)."""
    for address in listeners.get(name, []):
        if not address.startswith("unix:"):
            return int(address.rsplit(":", 1)[1])
    raise KeyError("no TCP listener %r among %r" % (name, listeners))
