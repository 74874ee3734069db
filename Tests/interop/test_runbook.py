"""docs/runbook.md runs as written.

The blocks of the runbook marked ```sh runbook are extracted from the document and run in
document order, on loopback with tokens, while a thread writes to fakekt through KT's HTTP
RPC: the mirror bridge, the replica's moves, the barrier, the cut-over to N, "L retired",
the rollback to L, and the producer's move from KT to qsrest (the workload is the producer
`dns`: it stops writing to KT before section 9's wait and writes through qsrest after it).
At the end every node is compared with `qsctl verify --against`, the root with `qsctl
verify --kt`, and every acknowledged write is read back from the replica.

How a line runs:
- `export NAME=VALUE` sets NAME for the lines after it;
- `COMMAND … & NAME=$!` starts a daemon in the background: the test starts it (so it can
  reap it) through `bash -c "exec COMMAND"`, waits for its ready file (QS_READY_FILE) and
  sets NAME to its pid; a `--listen $VAR` or `--admin $VAR` whose VAR is still port 0 is
  set to the address it got (so later lines, and restarts, use it; not `$ADMIN`, which
  every other daemon shares);
- `cat > FILE <<WORD` takes the lines up to WORD as its here-document;
- `kill -TERM $NAME` runs as written, then the test reaps that daemon;
- any other line runs in bash and must exit 0.
A block holding a `verify` runs at a quiet moment: the workload pauses for it.

The layout the runbook starts from (section 0: L fed by its KT bridge, N an empty root, a
replica following L through --upstream-file) is started from the runbook's own lines
where it has them (L's `qsnode` and L's `qsktbridge`, from section 8).
"""
import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import pytest

from conftest import ROOT
from qs_ports import port as listener_port, stop, wait_ready

BIN_DIR = os.path.abspath(os.environ.get("QS_BIN_DIR", os.path.join(ROOT, ".build", "debug")))
RUNBOOK = os.path.join(ROOT, "docs", "runbook.md")
DAEMON = re.compile(r"^(?P<cmd>.*?)\s*&\s*(?P<name>\w+)=\$!\s*(#.*)?$")
KILL = re.compile(r"^kill -TERM \$(?P<name>\w+)\b")
EXPORT = re.compile(r"^export (?P<name>\w+)=")
HEREDOC = re.compile(r"<<'?(?P<word>\w+)'?")
ADDRESS_FLAG = re.compile(r"--(?P<flag>listen|admin) \$(?P<name>\w+)\b")


def runbook_blocks():
    """The runbook's executable blocks, in document order, each a list of command lines
    (comment-only and empty lines left out)."""
    with open(RUNBOOK) as f:
        text = f.read()
    blocks = []
    for body in re.findall(r"^```sh runbook\n(.*?)^```", text, re.S | re.M):
        lines, heredoc = [], None
        for line in (line.strip() for line in body.splitlines()):
            if heredoc:
                lines[-1] += "\n" + line
                if line == heredoc:
                    heredoc = None
                continue
            if not line or line.startswith("#"):
                continue
            lines.append(line)
            m = HEREDOC.search(line)
            heredoc = m and m.group("word")
        assert not heredoc, "a here-document without its end %r" % heredoc
        blocks.append(lines)
    return blocks


class Workload:
    """The producer `dns`: writes through KT's HTTP RPC `set`, in both mapped databases, to
    KT until `move()`, to qsrest with its credential after; `pause()` returns once no write
    is in flight. `acknowledged` holds the last value answered 200 for each QS key."""

    def __init__(self, kt_port):
        self.url = "http://127.0.0.1:%d/rpc/set" % kt_port
        self.headers = {}
        self.acknowledged = {}
        self.through_qsrest = 0
        self.running = threading.Event()
        self.running.set()
        self.in_flight = threading.Lock()
        self.done = False
        self.written = 0
        self.errors = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        i = 0
        while not self.done:
            self.running.wait()
            with self.in_flight:
                if not self.running.is_set() or self.done:
                    continue
                i += 1
                db = i % 2
                key = "dns/%d" % (i % 500)
                body = urllib.parse.urlencode({"key": key, "value": "v%d" % i, "DB": db}).encode()
                try:
                    request = urllib.request.Request(self.url, body, self.headers)
                    with urllib.request.urlopen(request, timeout=10) as reply:
                        if reply.status != 200:
                            self.errors.append("set answered %s" % reply.status)
                            continue
                    self.written += 1
                    self.acknowledged[("aux/" if db else "") + key] = "v%d" % i
                    if self.headers:
                        self.through_qsrest += 1
                except OSError as error:
                    self.errors.append(str(error))
            time.sleep(0.005)  # pacing: about a hundred writes a second

    def pause(self):
        self.running.clear()
        with self.in_flight:
            pass

    def move(self, address, token):
        """The producer's move: its address and credential change, nothing else."""
        self.url = "http://%s/rpc/set" % address
        self.headers = {"Authorization": "Basic " + base64.b64encode(("dns:" + token).encode()).decode()}

    def resume(self):
        self.running.set()

    def stop(self):
        self.done = True
        self.running.set()
        self.thread.join(timeout=30)


class Runner:
    """Runs runbook lines with the layout's variables; owns every daemon they start."""

    def __init__(self, work, env):
        self.work = work
        self.env = env
        self.daemons = {}  # NAME → (process, log path)
        self.finished = []  # (NAME, exit status) of daemons reaped
        self.transcript = []
        self.count = 0

    def line(self, line):
        self.transcript.append("$ " + line)
        daemon, kill, export = DAEMON.match(line), KILL.match(line), EXPORT.match(line)
        if daemon:
            return self.start(daemon.group("name"), daemon.group("cmd"))
        if export:
            name = export.group("name")
            # On a line of its own: the export's line may end in a comment.
            out = self.bash(line + '\nprintf %s "$' + name + '"')
            assert out, "%s is empty after: %s" % (name, line)
            self.env[name] = out
            return out
        out = self.bash(line)
        if kill:
            self.reap(kill.group("name"))
        return out

    def bash(self, line):
        p = subprocess.run(["bash", "-c", line], env=self.env, capture_output=True, text=True, timeout=90)
        self.transcript.append(p.stdout + p.stderr)
        assert p.returncode == 0, "runbook line exited %s: %s\n%s%s" % (p.returncode, line, p.stdout, p.stderr)
        return p.stdout

    def start(self, name, cmd, extra_env=None):
        if name in self.daemons:
            self.reap(name, timeout=30)
        self.count += 1
        log = os.path.join(self.work, "%s-%d.log" % (name, self.count))
        ready = os.path.join(self.work, "%s-%d.ready" % (name, self.count))
        env = dict(self.env, QS_READY_FILE=ready, QS_LOG_FORMAT="text", **(extra_env or {}))
        with open(log, "w") as out:
            proc = subprocess.Popen(["bash", "-c", "exec " + cmd], env=env, stdout=out, stderr=subprocess.STDOUT)
        self.daemons[name] = (proc, log)
        try:
            listeners = wait_ready(ready, proc, timeout=30)
        except RuntimeError as error:
            raise AssertionError("%s (%s): %s\n%s" % (name, cmd, error, read(log)))
        self.env[name] = str(proc.pid)
        for m in ADDRESS_FLAG.finditer(cmd):
            var = m.group("name")
            if var != "ADMIN" and self.env.get(var, "").endswith(":0"):
                names = ["admin"] if m.group("flag") == "admin" else [n for n in listeners if n != "admin"][:1]
                self.env[var] = "127.0.0.1:%d" % listener_port(listeners, names[0])
        return listeners

    def reap(self, name, timeout=30):
        proc, log = self.daemons.pop(name)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = stop(proc)
        self.finished.append((name, code, log))

    def stop_all(self):
        for name in list(self.daemons):
            proc, log = self.daemons.pop(name)
            self.finished.append((name, stop(proc), log))

    def logs(self):
        paths = sorted(os.path.join(self.work, f) for f in os.listdir(self.work) if f.endswith(".log"))
        return "\n".join("== %s\n%s" % (p, read(p)[-3000:]) for p in paths)


def read(path):
    with open(path, errors="replace") as f:
        return f.read()


def named_line(blocks, name):
    """The first runbook line that starts daemon `name` (`… & name=$!`)."""
    for block in blocks:
        for line in block:
            m = DAEMON.match(line)
            if m and m.group("name") == name:
                return m.group("cmd")
    raise AssertionError("the runbook starts no daemon as %s=$!" % name)


def test_runbook_blocks_are_marked_and_use_only_variables():
    blocks = runbook_blocks()
    assert len(blocks) >= 10, "the runbook's procedure is in ```sh runbook blocks"
    text = "\n".join(line for block in blocks for line in block)
    for needed in ("cutover --from $L --to $N", "cutover --from $N --to $L", "verify --against", "verify --kt",
                   "qsqsbridge", "qsktbridge", "kill -TERM $NODE_L", "wait --head-of", "qsrest --root",
                   "--exclude-acl $ACL", "usage --acl $ACL"):
        assert needed in text, "the runbook's blocks hold %r" % needed
    assert not re.search(r"\b[LN]:7400\b|kt-master|/var/lib|/etc/qs|:1978\b", text), "addresses and paths are variables"
    assert "until [" not in text, "every wait has a deadline (qsctl wait --timeout)"


def test_runbook_runs_as_written(fakekt):
    blocks = runbook_blocks()
    work = tempfile.mkdtemp(prefix="qs-runbook-")
    tokens = os.path.join(work, "tokens")
    data = os.path.join(work, "data")
    os.makedirs(tokens)
    os.makedirs(data)
    for name in ("write", "replication", "admin"):
        with open(os.path.join(tokens, name), "w") as f:
            f.write("runbook-%s-token-0123456789abcdef\n" % name)
    kt = "127.0.0.1:%d" % fakekt["port"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("QS_")}
    env.update(PATH=BIN_DIR + os.pathsep + os.environ.get("PATH", ""), TOKENS=tokens, DATA=data, KT=kt,
               ADMIN="127.0.0.1:0", L="127.0.0.1:0", L_ADMIN="127.0.0.1:0", KTBRIDGE_ADMIN="127.0.0.1:0", QSREST="127.0.0.1:0",
               QSREST_ADMIN="127.0.0.1:0", ACL=os.path.join(work, "qsrest-acl.toml"),
               QS_BATCH_INTERVAL="100ms", QS_SHUTDOWN_TIMEOUT="3s")
    runner = Runner(work, env)
    workload = Workload(fakekt["port"])
    try:
        # The layout of section 0. L from the runbook's own line (on port 0 the first time;
        # the rollback restarts it on the port it got).
        runner.start("NODE_L", named_line(blocks, "NODE_L"))
        assert not env["L"].endswith(":0"), env["L"]
        n = runner.start("NODE_N", "qsnode --role root --data $DATA/N --listen 127.0.0.1:0 "
                                   "--write-token-file $TOKENS/write --replication-token-file $TOKENS/replication "
                                   "--admin-token-file $TOKENS/admin")
        env["N"] = "127.0.0.1:%d" % listener_port(n, "write")
        upstream_file = os.path.join(work, "upstreams")
        with open(upstream_file, "w") as f:
            f.write(env["L"] + "\n")
        replica = runner.start("REPLICA_PID", "qsnode --role replica --data $DATA/R --listen 127.0.0.1:0 "
                                              "--upstream-file $UPSTREAM_FILE --upstream-token-file $TOKENS/replication "
                                              "--admin 127.0.0.1:0 --admin-token-file $TOKENS/admin",
                               extra_env={"UPSTREAM_FILE": upstream_file})
        env.update(UPSTREAM_FILE=upstream_file, REPLICA="127.0.0.1:%d" % listener_port(replica, "write"),
                   REPLICA_ADMIN="127.0.0.1:%d" % listener_port(replica, "admin"))
        # Role changes take the admin token: the write token alone is refused, nothing changes.
        refused = subprocess.run(["qsctl", "--node", env["N"], "--write-token-file", os.path.join(tokens, "write"), "demote"],
                                 env=env, capture_output=True, text=True, timeout=30)
        assert refused.returncode == 3 and "admin token" in refused.stderr, (refused.returncode, refused.stderr)
        # A record no producer owns: `verify --kt --exclude-acl` (section 9) still compares it.
        seed = urllib.parse.urlencode({"key": "zone/seed", "value": "kept", "DB": 0}).encode()
        with urllib.request.urlopen(workload.url, seed, timeout=10) as reply:
            assert reply.status == 200
        workload.acknowledged["zone/seed"] = "kept"
        workload.thread.start()
        runner.start("KTBRIDGE_L", named_line(blocks, "KTBRIDGE_L"))

        for block in blocks:
            quiet = any(" verify " in line for line in block)
            # Section 9: the producer stops writing to KT before the wait, and moves after.
            moves = any("$QSREST/rpc/set" in line for line in block)
            if quiet or moves:
                workload.pause()
            before = workload.written
            for line in block:
                runner.line(line)
            if any("cutover" in line for line in block):
                assert workload.written > before, "KT was written to while the writes moved"
            if moves:
                workload.move(env["QSREST"], env["PRODUCER_TOKEN"])
            workload.resume()

        # The end state: L the root, written by qsrest (KT's bridge stopped), N its mirror,
        # the replica on L. Every write qsrest acknowledged is committed at L.
        deadline = time.monotonic() + 60
        while workload.through_qsrest < 100 and not workload.errors:
            assert time.monotonic() < deadline, "qsrest took %d writes in 60 s" % workload.through_qsrest
            time.sleep(0.05)
        workload.pause()
        assert not workload.errors, workload.errors[:5]
        assert workload.written > 100, "the workload ran throughout (%d writes)" % workload.written
        assert workload.through_qsrest >= 100, "the producer wrote through qsrest (%d writes)" % workload.through_qsrest
        qsctl = lambda *args: subprocess.run(["qsctl"] + list(args), env=env, capture_output=True, text=True, timeout=90)
        for node in (env["N"], env["REPLICA"]):
            w = qsctl("--node", node, "wait", "--head-of", env["L"], "--timeout", "30s")
            assert w.returncode == 0, (node, w.stdout, w.stderr)
        for other in (env["N"], env["REPLICA"]):
            v = qsctl("--node", env["L"], "verify", "--against", other)
            assert v.returncode == 0, (other, v.stdout, v.stderr)
        dump = qsctl("--node", env["REPLICA"], "dump", "--output", "jsonl")
        assert dump.returncode == 0, dump.stderr
        stored = {}
        for line in dump.stdout.splitlines():
            record = json.loads(line)
            stored[base64.b64decode(record["key"]).decode()] = base64.b64decode(record["value"]).decode()
        lost = {k: (v, stored.get(k)) for k, v in workload.acknowledged.items() if stored.get(k) != v}
        assert not lost, "acknowledged writes not on the replica: %r" % list(lost.items())[:5]
        status = qsctl("--node", env["L"], "status", "--output", "json")
        assert '"promoted"' in status.stdout or '"root"' in status.stdout, status.stdout
        reaped = {name: code for name, code, _ in runner.finished}
        assert reaped.get("NODE_L") == 0, "L stopped cleanly when it was retired"
        assert reaped.get("KTBRIDGE_L") == 0, "the KT bridge flushed its last batch and exited 0 (section 9)"
        retired = qsctl("--node", env["L"], "status").stdout
        assert "no writer connected: its bridge is down, or the source is retired" in retired, retired
        mirrors = [read(log) for name, _, log in runner.finished if name == "MIRROR_N"]
        assert mirrors and "this root was promoted" in mirrors[0], "N's first mirror bridge stopped at the cut-over"
        print("\n".join(runner.transcript))
    except BaseException:
        print("\n".join(runner.transcript[-80:]))
        print(runner.logs())
        raise
    finally:
        workload.stop()
        runner.stop_all()
        shutil.rmtree(work, ignore_errors=True)
