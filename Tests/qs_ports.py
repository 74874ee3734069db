"""Helpers shared by the Python test suites (Tests/interop, Tests/deploy)."""
import random
import socket

_HANDED_OUT = set()


def free_port():
    """A free loopback port below the kernel's ephemeral range (32768+), never the same
    twice in a run, so a client connection made meanwhile cannot take it before the
    server binds it."""
    for _ in range(2000):
        port = random.randint(20000, 32767)
        if port in _HANDED_OUT:
            continue
        _HANDED_OUT.add(port)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
