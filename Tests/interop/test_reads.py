"""Interop: real memcached and Kyoto Tycoon clients (pymemcache, ukt) read from a QS replica.

The records are written to a root; the clients read from a replica that follows it.

Run from the package root after `swift build`:
    python3 -m pytest Tests/interop/test_reads.py
The binaries come from QS_BIN_DIR (default .build/debug).
"""
import base64
import os
import shutil
import subprocess
import tempfile
import time

import pytest
from pymemcache.client.base import Client as MemcacheClient
from pymemcache.exceptions import MemcacheServerError
from ukt import KT_NONE, KyotoTycoon, ProtocolError
from qs_ports import port as listener_port, start, stop_all  # noqa: E402  (Tests/ is on the path: Tests/conftest.py)

BIN = os.environ.get("QS_BIN_DIR", ".build/debug")




def put(node, key, value, expires=None):
    args = [os.path.join(BIN, "qsctl"), "--node", node, "--base64", "put",
            base64.b64encode(key).decode(), base64.b64encode(value).decode()]
    if expires is not None:
        args += ["--expires", str(expires)]
    subprocess.run(args, check=True, capture_output=True, env={k: v for k, v in os.environ.items() if not k.startswith("QS_")})


NOW = int(time.time())
# The memcached plug-in of KT (opts=f) kept the flags in the value's last 4 bytes.
FLAGS = (7).to_bytes(4, "big")
RECORDS = {
    b"greeting": (b"hello" + FLAGS, None),
    b"binval": (bytes(range(256)) + FLAGS, NOW + 3600),
    b"expired": (b"stale" + FLAGS, NOW - 60),
    b"bin\x00key\t\xff": (b"\x00\r\n\xfe", None),
    b"aux/k": (b"aux value", None),
}


def head(node):
    out = subprocess.run([os.path.join(BIN, "qsctl"), "--node", node, "head"], check=True, capture_output=True,
                         env={k: v for k, v in os.environ.items() if not k.startswith("QS_")}).stdout
    return out.strip()


@pytest.fixture(scope="module")
def node():
    tmp = tempfile.mkdtemp(prefix="qs-interop-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QS_")}
    procs = []
    try:
        with open(os.path.join(tmp, "root.log"), "w") as log:
            root, listeners = start(
                [os.path.join(BIN, "qsnode"), "--role", "root", "--data", os.path.join(tmp, "root"),
                 "--listen", "127.0.0.1:0"],
                stderr=log, env=env)
        procs.append(root)
        ports = {"root": listener_port(listeners, "write")}
        for key, (value, xt) in RECORDS.items():
            put("127.0.0.1:%d" % ports["root"], key, value, xt)
        with open(os.path.join(tmp, "qsnode.log"), "w") as log:
            proc, listeners = start(
                [os.path.join(BIN, "qsnode"), "--role", "replica", "--data", os.path.join(tmp, "replica"),
                 "--upstream", "127.0.0.1:%d" % ports["root"],
                 "--listen", "127.0.0.1:0",
                 "--memcached", "127.0.0.1:0", "--kt-http", "127.0.0.1:0",
                 "--memcached-unix", os.path.join(tmp, "mc.sock"), "--memcached-flags-in-value", "true",
                 "--kt-db-map", "0=,1=aux/"],
                stderr=log, env=env)
        procs.append(proc)
        ports.update(write=listener_port(listeners, "write"), mc=listener_port(listeners, "memcached"),
                     kt=listener_port(listeners, "kt-http"))
        want = head("127.0.0.1:%d" % ports["root"])
        deadline = time.monotonic() + 30
        while head("127.0.0.1:%d" % ports["write"]) != want:
            assert time.monotonic() < deadline, "the replica did not catch up with the root"
            time.sleep(0.05)
        ports["mc_unix"] = os.path.join(tmp, "mc.sock")
        yield ports
    finally:
        problems = stop_all(reversed(procs))  # the replica first, then the root
        shutil.rmtree(tmp, ignore_errors=True)
        assert not problems, problems


def flags_serde():
    class Serde:
        def serialize(self, key, value):
            return value, 0

        def deserialize(self, key, value, flags):
            return (value, flags)
    return Serde()


def test_pymemcache_get_many_binary_values_and_flags(node):
    c = MemcacheClient(("127.0.0.1", node["mc"]), serde=flags_serde(), timeout=5)
    got = c.get_many(["greeting", "binval", "expired", "missing"])
    assert got == {"greeting": (b"hello", 7), "binval": (bytes(range(256)), 7)}
    assert c.get("expired") is None
    value, cas = c.gets("greeting")
    assert value == (b"hello", 7)
    assert cas == c.gets("greeting")[1] and int(cas) > 0
    assert c.version() == b"KyotoTycoon/0.9.56b"
    assert b"curr_connections" in c.stats()
    c.close()


def test_pymemcache_over_a_unix_socket(node):
    c = MemcacheClient(node["mc_unix"], serde=flags_serde(), timeout=5)
    assert c.get_many(["greeting", "missing"]) == {"greeting": (b"hello", 7)}
    c.close()


def test_pymemcache_writes_are_refused_and_the_connection_stays_usable(node):
    c = MemcacheClient(("127.0.0.1", node["mc"]), serde=flags_serde(), timeout=5)
    with pytest.raises(MemcacheServerError, match="read-only"):
        c.set("greeting", b"new", noreply=False)
    with pytest.raises(MemcacheServerError, match="read-only"):
        c.delete("greeting", noreply=False)
    assert c.get("greeting") == (b"hello", 7)
    c.close()


def kt_client(node):
    return KyotoTycoon("127.0.0.1", node["kt"], serializer=KT_NONE, decode_keys=False)


def test_ukt_get_and_get_bulk_with_binary_keys(node):
    kt = kt_client(node)
    assert kt.get(b"greeting") == b"hello" + FLAGS
    assert kt.get(b"bin\x00key\t\xff") == b"\x00\r\n\xfe"
    assert kt.get(b"expired") is None
    got = kt.get_bulk([b"greeting", b"binval", b"expired", b"nope", b"bin\x00key\t\xff"])
    assert got == {b"greeting": b"hello" + FLAGS, b"binval": bytes(range(256)) + FLAGS, b"bin\x00key\t\xff": b"\x00\r\n\xfe"}
    assert kt.get(b"k", db=1) == b"aux value"
    assert kt.get(b"aux/k") is None


def test_ukt_http_procedures(node):
    kt = kt_client(node)
    assert kt.check(b"greeting") is True
    assert kt.check(b"expired") is False
    assert kt.length(b"bin\x00key\t\xff") == 4
    assert sorted(kt.match_prefix(b"bin")) == [b"bin\x00key\t\xff", b"binval"]
    assert sorted(kt.match_regex(b"^gree")) == [b"greeting"]
    assert kt.count(db=1) == 1
    assert kt.status()["count"] == 4  # database 0 holds 4 records, the expired one included (as in KT)
    assert kt.report()[b"db_total_count"] == 5


def test_ukt_writes_fail(node):
    kt = kt_client(node)
    with pytest.raises(ProtocolError):
        kt.set(b"greeting", b"new")  # binary set_bulk: KT's error reply
    assert kt.get(b"greeting") == b"hello" + FLAGS
