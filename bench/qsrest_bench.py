#!/usr/bin/env python3
"""qsrest's writes/s and p99 acknowledgement latency at 1, 16 and 64 concurrent producers,
against fakekt's own HTTP `set` measured in the same run (no KT built outside the
repository is on the machine; with one, pass --kt HOST:PORT to measure it instead).

    QS_BIN_DIR=.build/release python3 bench/qsrest_bench.py [--seconds 5] [--out bench/results]

Each producer is a thread with one keep-alive HTTP connection sending `set` of a 100-byte
value in a loop; an acknowledgement is the 200 answer (for qsrest: after the root's
commit). qsrest runs with its default 500 ms batch interval, so a lone producer is bound
to about two writes a second by design: the interval is what spares the root's disk.
"""
import argparse
import base64
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests"))
from qs_ports import port as listener_port, start, stop  # noqa: E402


def run(port, producers, seconds, headers):
    latencies = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    errors = [0]

    def producer(n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        value = "v" * 100
        i = 0
        mine = []
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            conn.request("POST", "/rpc/set", "key=p%d-%d&value=%s" % (n, i, value),
                         dict(headers, **{"Content-Type": "application/x-www-form-urlencoded"}))
            r = conn.getresponse()
            r.read()
            if r.status == 200:
                mine.append(time.monotonic() - t0)
            else:
                errors[0] += 1
            i += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(producers)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan")
    return {"producers": producers, "writes_per_sec": len(latencies) / elapsed, "p99_ms": p99 * 1000,
            "acked": len(latencies), "errors": errors[0]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--producers", default="1,16,64")
    ap.add_argument("--batch-interval", default="500ms")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--kt", default="", help="a real ktserver HOST:PORT to measure instead of fakekt")
    args = ap.parse_args()
    bin_dir = os.environ.get("QS_BIN_DIR", ".build/release")
    work = tempfile.mkdtemp(prefix="qsrest-bench-")
    procs = []
    log = open(os.path.join(work, "log"), "w")
    try:
        acl = os.path.join(work, "acl.toml")
        with open(acl, "w") as f:
            f.write('[producers.bench]\ntoken_sha256 = "%s"\nprefixes = ["p"]\n' % hashlib.sha256(b"bench").hexdigest())
        root, ls = start([os.path.join(bin_dir, "qsnode"), "--role", "root", "--data", os.path.join(work, "root"),
                          "--listen", "127.0.0.1:0"], stdout=subprocess.DEVNULL, stderr=log)
        procs.append(root)
        rest, rls = start([os.path.join(bin_dir, "qsrest"), "--root", "127.0.0.1:%d" % listener_port(ls, "write"),
                           "--listen", "127.0.0.1:0", "--acl", acl, "--batch-interval", args.batch_interval,
                           "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=log)
        procs.append(rest)
        if args.kt:
            kt_port, kt_name = int(args.kt.rsplit(":", 1)[1]), "ktserver " + args.kt
        else:
            kt, kls = start([os.path.join(bin_dir, "fakekt"), "-host", "127.0.0.1", "-port", "0"],
                            ready_flag="-ready-file", stdout=subprocess.DEVNULL, stderr=log)
            procs.append(kt)
            kt_port, kt_name = listener_port(kls, "kt"), "fakekt"
        auth = {"Authorization": "Basic " + base64.b64encode(b"bench:bench").decode()}
        rows = []
        for n in [int(x) for x in args.producers.split(",")]:
            q = run(listener_port(rls, "rest"), n, args.seconds, auth)
            k = run(kt_port, n, args.seconds, {})
            rows.append({"producers": n, "qsrest": q, "kt": k})
            print("%3d producers: qsrest %8.0f writes/s p99 %7.1f ms | %s %8.0f writes/s p99 %6.1f ms"
                  % (n, q["writes_per_sec"], q["p99_ms"], kt_name, k["writes_per_sec"], k["p99_ms"]))
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "qsrest.json"), "w") as f:
            json.dump({"benchmark": "qsrest", "reference": kt_name, "batch_interval": args.batch_interval,
                       "seconds": args.seconds, "rows": rows}, f, indent=1)
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
