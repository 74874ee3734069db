"""ukt (PyPI) as a KT producer moved to qsrest: the same calls against fakekt and against
qsrest (in front of a real root) give the same answers; the credential is the only change."""
import base64
import hashlib
import os
import shutil
import subprocess
import tempfile

import pytest
from ukt import KyotoTycoon
from ukt.exceptions import ProtocolError

from qs_ports import port as listener_port, start, stop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("QS_BIN_DIR", os.path.join(ROOT, ".build", "debug"))


@pytest.fixture(scope="module")
def qsrest():
    work = tempfile.mkdtemp(prefix="qsrest-")
    procs = []
    try:
        acl = os.path.join(work, "acl.toml")
        with open(acl, "w") as f:
            f.write('[producers.app]\ntoken_sha256 = "%s"\nprefixes = ["app/", "aux/app/"]\n'
                    % hashlib.sha256(b"app-token").hexdigest())
            f.write('[producers.other]\ntoken_sha256 = "%s"\nprefixes = ["other/"]\n'
                    % hashlib.sha256(b"other-token").hexdigest())
        log = open(os.path.join(work, "log"), "w")
        root, listeners = start([os.path.join(BIN, "qsnode"), "--role", "root", "--data", os.path.join(work, "root"),
                                 "--listen", "127.0.0.1:0"], stdout=subprocess.DEVNULL, stderr=log)
        procs.append(root)
        root_port = listener_port(listeners, "write")
        rest, listeners = start([os.path.join(BIN, "qsrest"), "--root", "127.0.0.1:%d" % root_port,
                                 "--listen", "127.0.0.1:0", "--acl", acl, "--db-map", "0=,1=aux/",
                                 "--batch-interval", "20ms", "--source-id", "qsrest:ukt"],
                                stdout=subprocess.DEVNULL, stderr=log)
        procs.append(rest)
        yield {"port": listener_port(listeners, "rest"), "root_port": root_port}
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(work, ignore_errors=True)


def producer(port, user, token):
    client = KyotoTycoon(port=port, timeout=10)
    client._headers["Authorization"] = "Basic " + base64.b64encode(("%s:%s" % (user, token)).encode()).decode()
    return client


def script(kt, prefix):
    """A producer's writes over HTTP, and what each answered."""
    k = lambda s: prefix + s  # noqa: E731
    return [
        kt.set_http(k("a"), "1"),
        kt.add(k("a"), "2"),
        kt.add(k("b"), "2"),
        kt.replace(k("none"), "x"),
        kt.replace(k("b"), "3"),
        kt.append(k("b"), "-tail"),
        kt.increment(k("n"), 5),
        kt.increment(k("n"), -2),
        kt.cas(k("c"), None, "new"),
        kt.cas(k("c"), "wrong", "x"),
        kt.cas(k("c"), "new", "newer"),
        kt.set_bulk_http({k("x"): "1", k("y"): "2"}),
        kt.remove_bulk_http([k("x"), k("zz")]),
        kt.remove_http(k("y")),
        kt.remove_http(k("y")),
        kt.set_http(k("d1"), "v", db=1),
        kt.add(k("d1"), "v", db=1),
    ]


def test_ukt_answers_are_the_same_from_fakekt_and_from_qsrest(fakekt, qsrest):
    kt = KyotoTycoon(port=fakekt["port"], timeout=5)
    kt.clear(db=0)
    kt.clear(db=1)
    expected = script(kt, "app/")
    kt.close_all()
    rest = producer(qsrest["port"], "app", "app-token")
    assert script(rest, "app/") == expected
    rest.close_all()


def test_a_producer_writes_only_its_own_keyspace(qsrest):
    app = producer(qsrest["port"], "app", "app-token")
    other = producer(qsrest["port"], "other", "other-token")
    assert other.set_http("other/1", "x")
    with pytest.raises(ProtocolError):
        app.set_http("other/2", "x")
    with pytest.raises(ProtocolError):
        other.set_http("app/2", "x")
    wrong = producer(qsrest["port"], "app", "other-token")
    with pytest.raises(ProtocolError):
        wrong.set_http("app/3", "x")
    for c in (app, other, wrong):
        c.close_all()


def stored(root_port, key):
    """Whether the root holds `key` (qsctl get exits 0)."""
    return subprocess.run([os.path.join(BIN, "qsctl"), "--node", "127.0.0.1:%d" % root_port, "get", key],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def test_ukt_binary_writes_are_refused_and_their_http_forms_go_through(qsrest):
    """ukt's set, set_bulk, remove and dict-style writes use KT's binary protocol, which
    carries no credential: qsrest answers KT's binary error (ukt raises ProtocolError) and
    writes nothing. The same writes through ukt's HTTP calls (set_http, set_bulk_http,
    remove_http, remove_bulk_http) are accepted, as docs/runbook.md section 9 says."""
    rest = producer(qsrest["port"], "app", "app-token")
    binary = [lambda: rest.set("app/bin1", "x"),
              lambda: rest.set_bulk({"app/bin2": "1", "app/bin3": "2"}),
              lambda: rest.update({"app/bin4": "1"}),
              lambda: rest.remove("app/bin1")]
    for call in binary:
        # A fresh connection per call: the refused one was closed by qsrest.
        rest.close_all()
        with pytest.raises(ProtocolError):
            call()
    for key in ("app/bin1", "app/bin2", "app/bin3", "app/bin4"):
        assert not stored(qsrest["root_port"], key)
    rest.close_all()
    assert rest.set_http("app/http1", "x")
    assert rest.set_bulk_http({"app/http2": "1", "app/http3": "2"}) == 2
    assert rest.remove_http("app/http1")
    assert rest.remove_bulk_http(["app/http2"]) == 1
    assert not stored(qsrest["root_port"], "app/http1")
    assert stored(qsrest["root_port"], "app/http3")
    rest.close_all()
