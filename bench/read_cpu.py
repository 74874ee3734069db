#!/usr/bin/env python3
"""CPU seconds of a root qsnode serving memcached gets (10-key get lines) from 2 client
processes, per 100,000 keys read: main against a branch, alternated, for a change on the read
path (docs/benchmarks.md). Usage: read_cpu.py QSNODE QSCTL REQUESTS OUTDIR"""
import json, os, random, signal, subprocess, sys, time
node, qsctl, requests, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
os.makedirs(out, exist_ok=True)
data = os.path.join(out, "data"); ready = os.path.join(out, "ready.json")
subprocess.run(["rm", "-rf", data, ready])
p = subprocess.Popen([node, "--role", "root", "--data", data, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                      "--memcached", "127.0.0.1:0", "--memcached-flags-in-value", "false",
                      "--expiry-purge-interval", "1h", "--ready-file", ready, "--log-level", "warning"],
                     stdout=open(os.path.join(out, "node.log"), "w"), stderr=subprocess.STDOUT)
deadline = time.time() + 60
while not os.path.exists(ready):
    assert time.time() < deadline and p.poll() is None, "no ready file"
    time.sleep(0.1)
time.sleep(0.3)
listeners = json.load(open(ready))
ls = listeners["listeners"] if isinstance(listeners, dict) else listeners
port = {l["name"]: int(l["address"].rsplit(":", 1)[1]) for l in ls}
keys = [f"zone:{i // 10}/rule:{i}" for i in range(100)]
for i, k in enumerate(keys):
    subprocess.run([qsctl, "--node", f"127.0.0.1:{port['write']}", "put", k, "v" * (20 + (i * 97) % 2000)], check=True, stdout=subprocess.DEVNULL)
client = f'''
import random, sys
from pymemcache.client.base import Client
c = Client(("127.0.0.1", {port["memcached"]}))
rnd = random.Random(int(sys.argv[1]))
keys = {keys!r}
for _ in range({requests // 2}):
    got = c.get_many(rnd.sample(keys, 10))
    assert len(got) == 10
'''
def cpu():
    f = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
before = cpu()
cs = [subprocess.Popen([sys.executable, "-c", client, str(s)]) for s in (1, 2)]
for c in cs: assert c.wait() == 0
used = cpu() - before
p.send_signal(signal.SIGTERM); p.wait(timeout=60)
print(json.dumps({"requests": requests, "keys_read": requests * 10, "cpu_s": used, "cpu_s_per_100k_keys": used / (requests * 10) * 1e5}))
