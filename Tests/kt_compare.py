#!/usr/bin/env python3
"""Drives a Kyoto Tycoon server (ktserver, or fakekt) with a seeded sequence of requests and
compares the answers: HTTP RPC in every column encoding, cursors, match_*, REST, report and
status, and the binary protocol, all on one connection per protocol (KT's cursors belong to
the connection).

    kt_compare.py record --port P --out FILE [--seed N --steps N]   answers of one server
    kt_compare.py check  --port P --transcript FILE                 replay, compare, list differences
    kt_compare.py diff   --port A --port B [--seed N --steps N]     two live servers

The server must have been started with the databases of DATABASES, in that order (and an
update log), e.g. `ktserver -port P -ulog DIR -sid 7 cmp_hash.kch cmp_tree.kct '*' '%' - + :`;
the sequence begins by clearing them. Answers are compared after `normalize`, which blanks
what differs between two honest servers (clocks, file sizes, paths, the server's port).
What fakekt still answers differently is listed in docs/fakekt.md.
"""
import argparse
import base64
import http.client
import json
import random
import re
import socket
import struct
import sys
import urllib.parse

# name, kind: "tree" databases iterate in key order, "hash" ones in an order of their own.
DATABASES = [("cmp_hash.kch", "hash"), ("cmp_tree.kct", "tree"), ("*", "hash"), ("%", "tree"),
             ("-", "hash"), ("+", "tree"), (":", "hash")]
FUTURE = 4_000_000_000  # absolute expiration times (xt < 0 in a request) far ahead

KEYS = [b"a", b"ab", b"abc", b"abd", b"b", b"ba", b"k01", b"k02", b"k10", b"k11", b"x\x00y", b"tab\tkey",
        b"nl\nkey", b"\xff\xfe", b"\xe3\x82\xad\xe3\x83\xbc", b"\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87", b"", b"n", b"d",
        b"pre/1", b"pre/2", b"pre/22", b"zz"]


def b64(b):
    return base64.b64encode(b).decode()


class Step:
    """One request: an HTTP request (method, path, headers, body) or binary request bytes."""

    def __init__(self, kind, group=None, **kw):
        self.kind, self.group, self.kw = kind, group, kw


def encode_tsv(params, colenc):
    def enc(b):
        if colenc == "B":
            return base64.b64encode(b)
        if colenc == "U":
            return urllib.parse.quote_from_bytes(b, safe="").encode()
        if colenc == "Q":
            out = bytearray()
            for c in b:
                if c in (0x3D,) or c < 0x20 or c > 0x7E:
                    out += b"=%02X" % c
                else:
                    out.append(c)
            return bytes(out)
        return b
    return b"".join(enc(k) + b"\t" + enc(v) + b"\n" for k, v in params)


def workload(seed, steps):
    """The seeded sequence of requests (deterministic for a seed)."""
    rnd = random.Random(seed)
    out = []

    def rpc(name, params, db=None, colenc=None, group=None, method="POST"):
        params = list(params)
        if db is not None:
            params.insert(0, (b"DB", db))
        if colenc is None:
            colenc = rnd.choice(["B", "U", "Q", None])
        if method == "GET":
            # Query-string form: KT decodes it as URL-encoded.
            q = "&".join(urllib.parse.quote_from_bytes(k, safe="") + "=" + urllib.parse.quote_from_bytes(v, safe="")
                         for k, v in params)
            out.append(Step("http", group, method="GET", path="/rpc/" + name + ("?" + q if q else ""), headers={}, body=b""))
            return
        headers = {"Content-Type": "text/tab-separated-values" + ("; colenc=" + colenc if colenc else "")}
        safe = colenc is not None or all(b"\t" not in k + v and b"\n" not in k + v for k, v in params)
        if not safe:
            headers["Content-Type"] = "text/tab-separated-values; colenc=B"
            colenc = "B"
        out.append(Step("http", group, method="POST", path="/rpc/" + name, headers=headers,
                        body=encode_tsv(params, colenc)))

    def dbref(i):
        # By index or by name (the last path component), as clients do.
        return str(i).encode() if rnd.random() < 0.6 or DATABASES[i][0] in ("*", "%", "-", "+", ":") else DATABASES[i][0].encode()

    def key():
        return rnd.choice(KEYS)

    def value():
        n = rnd.choice([0, 1, 3, 8, 20, 60, 300])
        if rnd.random() < 0.3:
            return bytes(rnd.randrange(256) for _ in range(n))
        return bytes(rnd.choice(b"abcdefghij-_ 0123456789") for _ in range(n))

    def xt():
        r = rnd.random()
        # No expiration in the past: ktserver lists and counts an expired record until its
        # gradual expiry purges it, at a moment of its own (docs/fakekt.md).
        if r < 0.6:
            return []
        return [(b"xt", b"-%d" % (FUTURE + rnd.randrange(1000)))]

    for i, _ in enumerate(DATABASES):
        rpc("clear", [], db=str(i).encode())
    rpc("void", [])
    rpc("echo", [(b"a", b"1"), (b"b\tc", b"\x00")])
    # Cursors per database: hash databases keep no known order, so a cursor there is only
    # placed with a key, and a move that depends on the order is followed by a new jump.
    cursor_known = {}
    cursor_db = {}    # cursor → the database it belongs to
    cursor_used = {}  # cursor → whether the server holds it (cur_delete of one it lacks creates it)
    for n in range(steps):
        i = rnd.randrange(len(DATABASES))
        kind = DATABASES[i][1]
        db = dbref(i)
        r = rnd.random()
        if r < 0.22:
            rpc("set", [(b"key", key()), (b"value", value())] + xt(), db)
        elif r < 0.26:
            rpc(rnd.choice(["add", "replace", "append"]), [(b"key", key()), (b"value", value())] + xt(), db)
        elif r < 0.34:
            rpc(rnd.choice(["get", "check", "get", "seize" if rnd.random() < 0.2 else "get"]), [(b"key", key())], db)
        elif r < 0.37:
            rpc("remove", [(b"key", key())], db)
        elif r < 0.40:
            k = rnd.choice([b"n", b"d"])
            if k == b"n":
                rpc("increment", [(b"key", k), (b"num", str(rnd.randrange(-5, 9)).encode())]
                    + ([(b"orig", rnd.choice([b"0", b"try", b"set", b"10"]))] if rnd.random() < 0.3 else []) + xt(), db)
            else:
                rpc("increment_double", [(b"key", k), (b"num", rnd.choice([b"1.5", b"-0.25", b"3", b"1e3"]))]
                    + ([(b"orig", rnd.choice([b"0", b"try", b"set", b"2.5"]))] if rnd.random() < 0.3 else []), db)
        elif r < 0.43:
            p = [(b"key", key())]
            if rnd.random() < 0.7:
                p.append((b"oval", value()))
            if rnd.random() < 0.7:
                p.append((b"nval", value()))
            rpc("cas", p + xt(), db)
        elif r < 0.48:
            ks = rnd.sample(KEYS, rnd.randrange(0, 5))
            what = rnd.choice(["set_bulk", "get_bulk", "remove_bulk"])
            extra = [(b"atomic", b"")] if rnd.random() < 0.3 else []
            if what == "set_bulk":
                rpc(what, extra + xt() + [(b"_" + k, value()) for k in ks], db)
            else:
                rpc(what, extra + [(b"_" + k, b"") for k in ks], db)
        elif r < 0.55:
            what = rnd.choice(["match_prefix", "match_regex", "match_similar"])
            # A limit on a hash database would pick records in its own order.
            mx = [(b"max", str(rnd.choice([0, 1, 2, -1])).encode())] if kind == "tree" and rnd.random() < 0.4 else []
            if what == "match_prefix":
                rpc(what, [(b"prefix", rnd.choice([b"", b"a", b"ab", b"pre/", b"k", b"\xe3"]))] + mx, db,
                    group="sorted" if kind == "hash" else None)
            elif what == "match_regex":
                rpc(what, [(b"regex", rnd.choice([b"^a", b"b$", b"k[0-9]+", b".", b"^pre/2", b"["]))] + mx, db,
                    group="sorted" if kind == "hash" else None)
            else:
                p = [(b"origin", rnd.choice([b"ab", b"k1", b"pre/3", b"\xe3\x82\xad", b"zz", b""]))]
                if rnd.random() < 0.6:
                    p.append((b"range", str(rnd.choice([0, 1, 2, 3, -1])).encode()))
                if rnd.random() < 0.5:
                    p.append((b"utf", rnd.choice([b"", b"0", b"1"])))
                rpc(what, p + mx, db)
        elif r < 0.78:
            cur = str(rnd.randrange(1, 4)).encode()
            # A cursor belongs to the database it was first used with (until cur_delete),
            # whatever DB a later call names.
            if cur in cursor_db:
                i = cursor_db[cur]
                kind = DATABASES[i][1]
                db = dbref(i)
            else:
                cursor_db[cur] = i
            ck = (cur, i)
            known = kind == "tree" or cursor_known.get(ck, False)
            ops = ["cur_jump", "cur_jump_back", "cur_step", "cur_step_back", "cur_get", "cur_get_key", "cur_get_value",
                   "cur_set_value", "cur_remove", "cur_seize", "cur_delete"]
            op = rnd.choice(ops)
            known_before = cursor_used.get(cur, False)
            cursor_used[cur] = op != "cur_delete" or not known_before
            if kind == "hash" and not known and op not in ("cur_jump_back", "cur_step_back", "cur_delete"):
                op = "cur_jump"
            if DATABASES[i][0] == "-" and op in ("cur_step_back", "cur_jump_back"):
                # A prototype hash answers 450 on its first record in its own order, else 501.
                op = "cur_jump"
            if kind == "hash" and op == "cur_step":
                op = "cur_get"  # whether a next record exists depends on the hash order
            p = [(b"CUR", cur)]
            if op in ("cur_jump", "cur_jump_back"):
                if kind == "tree" and rnd.random() < 0.3:
                    pass  # to the first / last record
                else:
                    p.append((b"key", key()))
            if op in ("cur_get", "cur_get_key", "cur_get_value", "cur_set_value") and rnd.random() < 0.4 and kind == "tree":
                p.append((b"step", b""))
            if op == "cur_set_value":
                p.append((b"value", value()))
                p += xt()
            rpc(op, p, db)
            if op == "cur_delete" and known_before:
                del cursor_db[cur]
            # Whether the cursor of a hash database now stands where a jump put it.
            if kind == "hash":
                if op == "cur_jump" and len(p) > 1:
                    cursor_known[ck] = True
                elif op in ("cur_get", "cur_get_key", "cur_get_value", "cur_set_value", "cur_jump_back", "cur_step_back"):
                    pass
                else:
                    cursor_known[ck] = False
        elif r < 0.84:
            k = key()
            path = "/" + urllib.parse.quote(DATABASES[i][0], safe="") + "/" + urllib.parse.quote_from_bytes(k, safe="") \
                if rnd.random() < 0.5 else "/" + urllib.parse.quote_from_bytes(k, safe="")
            m = rnd.choice(["GET", "HEAD", "PUT", "DELETE"])
            h = {}
            body = b""
            if m == "PUT":
                body = value()
                if rnd.random() < 0.3:
                    h["X-Kt-Mode"] = rnd.choice(["add", "replace", "set"])
                if rnd.random() < 0.3:
                    h["X-Kt-Xt"] = str(FUTURE + rnd.randrange(100))
            out.append(Step("http", None, method=m, path=path, headers=h, body=body))
        elif r < 0.92:
            out.append(Step("binary", None, data=binary_request(rnd)))
        else:
            what = rnd.choice(["status", "report", "void", "echo", "nope", "get", "set", "play_script", "count", "get_bulk"])
            if what == "status":
                rpc("status", [], db if rnd.random() < 0.8 else b"nosuch.kch")
            elif what == "report":
                rpc("report", [])
            elif what == "echo":
                rpc("echo", [(key() or b"e", value())], method=rnd.choice(["GET", "POST"]))
            elif what == "get":
                rpc("get", [], db)  # no key
            elif what == "set":
                rpc("set", [(b"key", key())], db)  # no value
            elif what == "play_script":
                rpc("play_script", [(b"name", b"echo"), (b"_a", b"1")])
            elif what == "get_bulk":
                rpc("get_bulk", [(b"_a", b"")], b"99")
            else:
                rpc(what, [], db)
    # Walks: every record of every database, in its order (hash databases compared as sets).
    for i, (_, kind) in enumerate(DATABASES):
        group = "walk-%d" % i if kind == "hash" else None
        rpc("cur_jump", [(b"CUR", b"9")], str(i).encode(), colenc="B")
        for _ in range(len(KEYS) + 2):
            rpc("cur_get", [(b"CUR", b"9"), (b"step", b"")], str(i).encode(), colenc="B", group=group)
        rpc("cur_delete", [(b"CUR", b"9")], str(i).encode(), colenc="B")
        rpc("status", [], str(i).encode(), colenc="B")
        rpc("match_prefix", [(b"prefix", b"")], str(i).encode(), colenc="B", group="sorted" if kind == "hash" else None)
    rpc("report", [])
    return out


def binary_request(rnd):
    """A request of KT's binary protocol: set_bulk (0xB8), remove_bulk (0xB9), get_bulk (0xBA)
    or play_script (0xB4), sometimes with flags 1 (no reply)."""
    magic = rnd.choice([0xB8, 0xB9, 0xBA, 0xBA, 0xB4])
    flags = 1 if rnd.random() < 0.1 and magic != 0xBA else 0
    if magic == 0xB4:
        args = [(b"a", b"1")] if rnd.random() < 0.5 else []
        name = rnd.choice([b"echo", b"nope"])
        body = struct.pack(">BII", magic, flags, len(name)) + struct.pack(">I", len(args)) + name
        for k, v in args:
            body += struct.pack(">II", len(k), len(v)) + k + v
        return body
    ks = rnd.sample(KEYS, rnd.randrange(0, 4))
    body = struct.pack(">BII", magic, flags, len(ks))
    for k in ks:
        dbi = rnd.choice([0, 1, 2, 3, 4, 5, 6, 0, 1, 42])
        if magic == 0xB8:
            v = bytes(rnd.choice(b"vwxyz") for _ in range(rnd.randrange(0, 12)))
            body += struct.pack(">HIIq", dbi, len(k), len(v), rnd.choice([0x7FFFFFFFFFFFFFFF, -(FUTURE + 5)])) + k + v
        else:
            body += struct.pack(">HI", dbi, len(k)) + k
    return body


class Server:
    """One server's two connections: HTTP (keep-alive; cursors live on it) and binary."""

    def __init__(self, port):
        self.port = port
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.bin = None

    def send(self, step):
        if step.kind == "http":
            kw = step.kw
            self.http.request(kw["method"], kw["path"], body=kw["body"] or None, headers=kw["headers"])
            r = self.http.getresponse()
            body = r.read()
            headers = {k: v for k, v in r.getheaders() if k.lower() not in ("date", "server")}
            return {"status": r.status, "headers": headers, "body_b64": b64(body)}
        if self.bin is None:
            self.bin = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        data = step.kw["data"]
        self.bin.sendall(data)
        if data[0] != 0xBA and struct.unpack(">I", data[1:5])[0] & 1:
            return {"binary_b64": ""}
        return {"binary_b64": b64(self.read_binary(data[0]))}

    def read_binary(self, magic):
        def exact(n):
            b = b""
            while len(b) < n:
                c = self.bin.recv(n - len(b))
                if not c:
                    raise EOFError("the server closed the binary connection")
                b += c
            return b
        head = exact(1)
        if head[0] == 0xBF:
            # An error: the server closes the connection.
            self.bin.close()
            self.bin = None
            return head
        n = struct.unpack(">I", exact(4))[0]
        body = head + struct.pack(">I", n)
        if magic in (0xB8, 0xB9):
            return body
        for _ in range(n):
            if magic == 0xBA:
                h = exact(18)
                _, ksiz, vsiz, _ = struct.unpack(">HIIq", h)
                body += h + exact(ksiz + vsiz)
            else:
                h = exact(8)
                ksiz, vsiz = struct.unpack(">II", h)
                body += h + exact(ksiz + vsiz)
        return body


VOLATILE_REPORT = re.compile(rb"^(serv_current_time|serv_running_term|serv_proc_id|serv_thread_count|serv_conn_count|"
                             rb"serv_task_count|sys_[a-z_]+|cnt_[a-z_]+|conf_[a-z_]+|repl_[a-z_]+)\t.*$", re.M)


def normalize(step, response, port):
    """What two honest servers may answer differently, blanked."""
    if step.kind != "http":
        return response
    r = json.loads(json.dumps(response))
    body = base64.b64decode(r["body_b64"])
    path = step.kw["path"]
    r["headers"] = {k.lower(): v for k, v in r["headers"].items()}
    if "location" in r["headers"]:
        r["headers"]["location"] = re.sub(r"//[^/]+/", "//SERVER/", r["headers"]["location"])
    name = path.split("?")[0]
    if name in ("/rpc/report", "/rpc/status", "/rpc/ulog_list"):
        if name == "/rpc/report":
            body = VOLATILE_REPORT.sub(lambda m: m.group(1) + b"\t*", body)
            body = re.sub(rb"(db_\d+\tcount=\d+ size=)\d+", rb"\1*", body)
            body = re.sub(rb"^db_total_size\t\d+$", b"db_total_size\t*", body, flags=re.M)
        elif name == "/rpc/status":
            body = re.sub(rb"^(size|msiz|fmtver|librev|libver|chksum|flags|opts|recovered|reorganized|trimmed|"
                          rb"cusage|apow|fpow|bnum|psiz|rcomp|pccap|dfunit|frgcnt|realsize|ktopts|ktcapcnt|ktcapsiz|"
                          rb"count_[a-z]+|size_[a-z]+|tran|opaque)\t.*$", rb"\1\t*", body, flags=re.M)
            body = b"\n".join(sorted(body.split(b"\n")))
        else:
            body = b"*"
        r["headers"].pop("content-length", None)
    if step.group == "sorted":
        # match_* number the keys in the database's order: a hash database's is its own.
        lines = [re.sub(rb"^(_.*)\t\d+$", rb"\1", line) for line in body.split(b"\n")]
        body = b"\n".join(sorted(lines))
    r["body_b64"] = b64(body)
    return r


def compare(steps, got_a, got_b, label_a, label_b, port_a, port_b):
    """Differences, one dict each; walk groups compare as multisets."""
    diffs = []
    groups = {}
    for n, step in enumerate(steps):
        a, b = normalize(step, got_a[n], port_a), normalize(step, got_b[n], port_b)
        if step.group and step.group.startswith("walk-"):
            groups.setdefault(step.group, ([], [], n))
            groups[step.group][0].append(json.dumps(a, sort_keys=True))
            groups[step.group][1].append(json.dumps(b, sort_keys=True))
            continue
        if a != b:
            diffs.append({"step": n, "request": describe(step), label_a: a, label_b: b})
    for g, (xa, xb, n) in groups.items():
        if sorted(xa) != sorted(xb):
            diffs.append({"step": n, "request": g, label_a: sorted(xa), label_b: sorted(xb)})
    return diffs


def describe(step):
    if step.kind == "binary":
        return "binary " + step.kw["data"][:64].hex()
    kw = step.kw
    return "%s %s %s %r" % (kw["method"], kw["path"], kw["headers"].get("Content-Type", ""), kw["body"][:200])


def step_to_json(step, response):
    if step.kind == "http":
        kw = step.kw
        return {"group": step.group, "request": {"method": kw["method"], "path": kw["path"], "headers": kw["headers"],
                                                 "body_b64": b64(kw["body"])}, "response": response}
    return {"group": step.group, "binary_request_b64": b64(step.kw["data"]), "response": response}


def step_from_json(d):
    if "binary_request_b64" in d:
        return Step("binary", d.get("group"), data=base64.b64decode(d["binary_request_b64"]))
    q = d["request"]
    return Step("http", d.get("group"), method=q["method"], path=q["path"], headers=q["headers"],
                body=base64.b64decode(q["body_b64"]))


def run(port, steps):
    s = Server(port)
    return [s.send(step) for step in steps]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["record", "check", "diff"])
    ap.add_argument("--port", type=int, action="append", required=True)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--out")
    ap.add_argument("--transcript")
    a = ap.parse_args(argv)
    if a.mode == "record":
        steps = workload(a.seed, a.steps)
        got = run(a.port[0], steps)
        with open(a.out, "w") as f:
            for step, r in zip(steps, got):
                f.write(json.dumps(step_to_json(step, r)) + "\n")
        print("recorded %d answers" % len(steps))
        return 0
    if a.mode == "check":
        with open(a.transcript) as f:
            recorded = [json.loads(line) for line in f if line.strip()]
        steps = [step_from_json(d) for d in recorded]
        diffs = compare(steps, [d["response"] for d in recorded], run(a.port[0], steps), "recorded", "got", None, a.port[0])
    else:
        steps = workload(a.seed, a.steps)
        diffs = compare(steps, run(a.port[0], steps), run(a.port[1], steps), "a", "b", a.port[0], a.port[1])
    for d in diffs:
        print(json.dumps(d))
    print("%d requests, %d differences" % (len(steps), len(diffs)), file=sys.stderr)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
