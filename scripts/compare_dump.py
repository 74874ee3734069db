#!/usr/bin/env python3
"""Compares a `qsctl dump --output jsonl` with a KT `final.jsonl` under a db map.

usage: compare_dump.py DUMP.jsonl FINAL.jsonl [--db-map 0=,1=aux/] [--at EPOCH]

final.jsonl records are {"db", "key", "value", "xt"} (base64; xt 1099511627775 = never).
Records of final.jsonl whose xt is not after --at are expected absent. Prints every
difference and exits 1 if there is any.
"""
import argparse
import base64
import json
import sys

NEVER = (1 << 40) - 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dump")
    ap.add_argument("final")
    ap.add_argument("--db-map", default="0=")
    ap.add_argument("--at", type=int, default=None)
    a = ap.parse_args()
    prefixes = {}
    for part in a.db_map.split(","):
        if part:
            i, p = part.split("=", 1)
            prefixes[int(i)] = p.encode()
    want = {}
    for line in open(a.final):
        r = json.loads(line)
        if r["db"] not in prefixes:
            continue
        xt = r.get("xt")
        xt = None if xt is None or xt >= NEVER else xt
        if a.at is not None and xt is not None and xt <= a.at:
            continue
        want[prefixes[r["db"]] + base64.b64decode(r["key"])] = (base64.b64decode(r["value"]), xt)
    got = {}
    for line in open(a.dump):
        r = json.loads(line)
        got[base64.b64decode(r["key"])] = (base64.b64decode(r["value"]), r["xt"])
    diffs = 0
    for k in sorted(set(want) | set(got)):
        if want.get(k) != got.get(k):
            diffs += 1
            if diffs <= 20:
                print(f"differs: key={k[:80]!r} expected={str(want.get(k))[:80]} got={str(got.get(k))[:80]}")
    print(f"{len(want)} expected records, {len(got)} dumped, {diffs} differences")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
