#!/usr/bin/env python3
"""A fixed amount of closed-loop read load, for instruction counts under callgrind
(scripts/profile.sh reads): each connection sends one request and waits for its whole
answer before the next. Keys are uniform random (fixed seed) among the write bench's
keys b0000/0000000000 … (qsbench --suites writes --write-target, batches of 100).

Usage: read_load.py HOST:PORT LOAD CONNECTIONS REQUESTS KEYS
  LOAD: mc (memcached get of one key), mc10 (get of 10 keys), rest (KT GET /KEY),
        rpc (KT GET /rpc/get?key=KEY)
Prints the requests answered and the keys found; exits 1 when a key was missing."""
import random, socket, sys, threading

host, port = sys.argv[1].rsplit(":", 1)
load, conns, requests, keys = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])


def key(i):
    return "b0000/%010d" % i


def request(rnd):
    if load == "mc":
        return ("get %s\r\n" % key(rnd.randrange(keys))).encode(), 1
    if load == "mc10":
        return ("get " + " ".join(key(rnd.randrange(keys)) for _ in range(10)) + "\r\n").encode(), 10
    path = "/" + key(rnd.randrange(keys)).replace("/", "%2F") if load == "rest" else \
        "/rpc/get?key=" + key(rnd.randrange(keys)).replace("/", "%2F")
    return ("GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % path).encode(), 1


def answer(s, buf):
    """Reads one whole answer; returns (keys found, leftover bytes)."""
    while True:
        if load in ("mc", "mc10"):
            end = buf.find(b"END\r\n")
            if end >= 0:
                return buf[:end].count(b"VALUE "), buf[end + 5:]
        else:
            head = buf.find(b"\r\n\r\n")
            if head >= 0:
                lines = buf[:head].split(b"\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(buf) >= head + 4 + length:
                    return (1 if lines[0].split()[1] == b"200" else 0), buf[head + 4 + length:]
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("connection closed by the server")
        buf += chunk


found = [0] * conns


def run(c):
    rnd = random.Random(c)
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    for _ in range(requests // conns):
        req, _ = request(rnd)
        s.sendall(req)
        n, buf = answer(s, buf)
        found[c] += n
    s.close()


threads = [threading.Thread(target=run, args=(c,)) for c in range(conns)]
for t in threads: t.start()
for t in threads: t.join()
per = 10 if load == "mc10" else 1
done = requests // conns * conns
print("%s: %d requests on %d connection(s), %d of %d keys found" % (load, done, conns, sum(found), done * per))
sys.exit(0 if sum(found) == done * per else 1)
