"""ukt (PyPI) against a real fakekt process: every non-Lua feature ukt has."""
import time

import pytest
from ukt import KT_NONE, KyotoTycoon
from ukt.replication import REPL_REMOVE, REPL_SET, ReplicationClient


@pytest.fixture
def kt(fakekt):
    client = KyotoTycoon(port=fakekt["port"], timeout=5)
    client.clear(db=0)
    client.clear(db=1)
    yield client
    client.close_all()


@pytest.fixture
def raw(fakekt):
    client = KyotoTycoon(port=fakekt["port"], timeout=5, serializer=KT_NONE, decode_keys=False)
    yield client
    client.close_all()


def test_string_values(kt):
    assert kt.set("k1", "v1")
    assert kt.get("k1") == "v1"
    assert kt.get("missing") is None
    assert kt.add("k1", "x") is False
    assert kt.replace("k1", "v2")
    assert kt.append("k1", "-tail")
    assert kt.get("k1") == "v2-tail"
    assert kt.check("k1")
    assert kt.length("k1") == 7
    assert kt.seize("k1") == "v2-tail"
    assert kt.get("k1") is None
    assert kt.set("u", "\u00e9t\u00e9 \t\n")
    assert kt.get("u") == "\u00e9t\u00e9 \t\n"


def test_binary_values(raw):
    value = bytes(range(256))
    key = b"\x00\xff\t\n"
    assert raw.set(key, value)
    assert raw.get(key) == value
    assert raw.get_bytes(key) == value
    assert raw.set_http(key, value[::-1])
    assert raw.get_http(key) == value[::-1]


def test_numbers_and_cas(kt):
    assert kt.increment("n", 5) == 5
    assert kt.increment("n", 2) == 7
    assert kt.increment_double("d", 1.5) == 1.5
    assert kt.cas("c", None, "new")
    assert kt.cas("c", "new", "newer")
    assert kt.cas("c", "wrong", "x") is False
    assert kt.get("c") == "newer"


def test_bulk_over_binary_protocol(kt):
    assert kt.set_bulk({"a": "1", "b": "2", "c": "3"}) == 3
    assert kt.get_bulk(["a", "b", "zz"]) == {"a": "1", "b": "2"}
    assert kt.remove_bulk(["a", "zz"]) == 1
    assert kt.get_bulk(["a", "b"]) == {"b": "2"}
    assert kt.set_bulk({"q": "1"}, no_reply=True) is None
    deadline = time.time() + 5
    while kt.get("q") != "1" and time.time() < deadline:
        time.sleep(0.01)
    assert kt.get("q") == "1"
    assert kt.remove("q") == 1
    assert kt.remove("q") == 0


def test_bulk_over_http(kt):
    assert kt.set_bulk_http({"h1": "x", "h2": "y\tz"}) == 2
    assert kt.get_bulk_http(["h1", "h2", "h3"]) == {"h1": "x", "h2": "y\tz"}
    assert kt.remove_bulk_http(["h1", "h3"]) == 1
    assert kt.get_bulk_http(["h1", "h2"]) == {"h2": "y\tz"}


def test_multiple_databases(kt):
    kt.set("k", "zero", db=0)
    kt.set("k", "one", db=1)
    assert kt.get("k", db=0) == "zero"
    assert kt.get("k", db=1) == "one"
    assert kt.count(db=0) == 1
    assert kt.count(db=1) == 1
    kt.clear(db=1)
    assert kt.get("k", db=1) is None
    assert kt.get("k", db=0) == "zero"
    assert int(kt.status(db=1)["count"]) == 0
    report = kt.report()
    assert "db_0" in report and "db_1" in report


def test_expiration(kt):
    kt.set("gone", "x", expire_time=-1)
    assert kt.get("gone") is None
    kt.set("soon", "x", expire_time=2)
    assert kt.get("soon") == "x"
    details = kt.get_bulk_details([(0, "soon")])
    xt = details[0][3]
    assert abs(xt - (time.time() + 2)) < 3
    deadline = time.time() + 6
    while kt.get("soon") is not None and time.time() < deadline:
        time.sleep(0.1)
    assert kt.get("soon") is None
    kt.set_bulk({"e1": "1"}, expire_time=-1)
    assert kt.get("e1") is None


def test_match_and_cursors(kt):
    kt.set_bulk({"p:1": "a", "p:2": "b", "q:1": "c"}, db=1)
    assert sorted(kt.match_prefix("p:", db=1)) == ["p:1", "p:2"]
    assert sorted(kt.match_regex("^q", db=1)) == ["q:1"]
    assert list(kt.keys(db=1)) == ["p:1", "p:2", "q:1"]
    cur = kt.cursor(db=1)
    assert cur.jump("p:2")
    assert cur.key() == "p:2"
    assert cur.value() == "b"
    assert cur.step()
    assert cur.get() == ("q:1", "c")
    assert cur.step_back()
    assert cur.key() == "p:2"
    assert cur.set_value("B")
    assert kt.get("p:2", db=1) == "B"
    assert cur.remove()
    assert kt.get("p:2", db=1) is None
    assert cur.jump_back()
    assert cur.key() == "q:1"
    assert cur.seize() == ("q:1", "c")
    cur.close()
    hash_cursor = kt.cursor(db=0)
    with pytest.raises(NotImplementedError):
        hash_cursor.jump_back()


def test_ulog_list(kt, fakekt):
    kt.set("logged", "1")
    files = kt.ulog_list()
    assert files and files[0][0].startswith(fakekt["ulog"])


def test_replication_client(fakekt):
    kt = KyotoTycoon(port=fakekt["port"], timeout=5)
    kt.set("repl-a", "1")
    kt.remove("repl-a")
    kt.set("repl-b", "2", db=1)
    client = ReplicationClient(kt, sid=200)
    seen = []
    for log in client.run(timestamp=0):
        if log["key"] in ("repl-a", "repl-b") if "key" in log else False:
            seen.append((log["op"], log["db"], log["key"], log.get("value")))
        if len(seen) == 3:
            break
    assert seen == [(REPL_SET, 0, "repl-a", "1"), (REPL_REMOVE, 0, "repl-a", None), (REPL_SET, 1, "repl-b", "2")]
    kt.close_all()
