"""QS_* variables: each means one thing, and an invalid value is refused as its flag would be.

    QS_BIN_DIR=.build/debug python3 -m pytest -q Tests/deploy/test_environment.py
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import qshelp  # noqa: E402

BIN_DIR = os.environ.get("QS_BIN_DIR", os.path.join(ROOT, ".build", "debug"))
EXECUTABLES = qshelp.dockerfile_executables()


@pytest.fixture(scope="module")
def helps():
    return qshelp.read_all(BIN_DIR, EXECUTABLES)


def test_every_variable_means_one_thing(helps):
    """A variable names one flag, taking one kind of value, across every executable and
    subcommand (the daemons share option groups; qsctl's are QS_CTL_[SUBCOMMAND_]FLAG)."""
    seen = {}
    for exe, commands in helps.items():
        for sub, cmd in commands.items():
            for o in cmd["options"]:
                v = o.get("variable")
                if not v:
                    continue
                meaning = (tuple(o["names"]), o.get("value"))
                where = (exe + " " + sub).strip()
                if v in seen and seen[v][0] != meaning:
                    pytest.fail("%s means %s in %s but %s in %s" % (v, seen[v][0], seen[v][1], meaning, where))
                seen.setdefault(v, (meaning, where))
    assert "QS_ROLE" in seen and "QS_CTL_NODE" in seen


def run(exe, args, env, timeout=20):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QS_")}
    clean.update(env)
    return subprocess.run([os.path.join(BIN_DIR, exe)] + args, env=clean, capture_output=True, text=True, timeout=timeout)


# (executable, arguments, variable, bad value, exit code): each run would start a daemon or
# do work if the variable were ignored or replaced by its default.
REFUSED = [
    ("qsnode", ["--data", "{tmp}/n"], "QS_ROLE", "Replica", 64),
    ("qsnode", ["--data", "{tmp}/n"], "QS_MAP_SIZE", "8 gigs", 64),
    ("qsnode", ["--data", "{tmp}/n"], "QS_LISTEN", "localhost", 64),
    ("qsnode", ["--data", "{tmp}/n"], "QS_LOG_LEVEL", "loud", 64),
    ("qsnode", ["--data", "{tmp}/n"], "QS_ADMIN", "nowhere", 64),
    ("qsnode", ["--data", "{tmp}/n"], "QS_MEMCACHED", "unix:/tmp/x", 64),
    ("qsnode", ["--data", "{tmp}/n"], "QS_MEMCACHED_FLAGS_IN_VALUE", "maybe", 64),
    ("qsktbridge", ["--source", "kt://127.0.0.1:1"], "QS_BATCH_INTERVAL", "fast", 64),
    ("qsktbridge", ["--source", "kt://127.0.0.1:1"], "QS_ON_UNMAPPED", "ignore", 64),
    ("qsktbridge", ["--source", "kt://127.0.0.1:1"], "QS_SID", "70000", 64),
    ("qsktbridge", [], "QS_SOURCE", "kt:/127.0.0.1:1", 64),
    ("qsktbridge", ["--source", "kt://127.0.0.1:1"], "QS_ONCE", "sometimes", 64),
    ("qsqsbridge", ["--source", "qs://127.0.0.1:1"], "QS_MODE", "Compatible", 64),
    ("qsqsbridge", ["--source", "qs://127.0.0.1:1"], "QS_ROOT", "root:port", 64),
    ("qsqsbridge", ["--source", "qs://127.0.0.1:1"], "QS_ROOT_STALE_AFTER", "10ms", 64),
    ("qsrest", ["--acl", "{tmp}/acl.toml"], "QS_ROOT_STALE_AFTER", "0s", 64),
    ("qsnode", ["--data", "{tmp}/n", "--etcd", "http://127.0.0.1:1", "--cluster", "t"], "QS_ETCD_APPLIED_TTL", "2s", 64),
    ("qsnode", ["--data", "{tmp}/n", "--etcd", "http://127.0.0.1:1", "--cluster", "t"], "QS_ETCD_APPLIED_TTL", "4.5s", 64),
    ("fakekt", ["-port", "0"], "QS_FAKEKT_SID", "sixty", 64),
    ("fakekt", ["-port", "0"], "QS_FAKEKT_FAULT_NO_HEARTBEAT", "perhaps", 64),
    ("fakekt", ["-port", "0"], "QS_FAKEKT_BGSI", "hourly", 64),
    ("fakekt", ["-port", "0"], "QS_FAKEKT_ONR", "perhaps", 64),
    ("qsnode", ["--data", "{tmp}/n"], "QS_ROLE", "", 64),
    ("qsktbridge", ["--source", "kt://127.0.0.1:1"], "QS_ONCE", "", 64),
    ("qsktbridge", ["--source", "kt://127.0.0.1:1"], "QS_DB_MAP", "0= 1=aux/", 64),
    ("qsctl", ["log"], "QS_CTL_LOG_FROM", "first", 2),
    ("qsctl", ["head"], "QS_CTL_NODE", "127.0.0.1", 2),
    ("qsctl", ["wait", "--source-id", "x", "--until", "5"], "QS_CTL_WAIT_TIMEOUT", "soon", 2),
]


@pytest.mark.parametrize("exe,args,variable,value,code", REFUSED, ids=[r[2] for r in REFUSED])
def test_invalid_variable_is_refused_naming_it(tmp_path, exe, args, variable, value, code):
    p = run(exe, [a.replace("{tmp}", str(tmp_path)) for a in args], {variable: value})
    assert p.returncode == code, (p.returncode, p.stderr[-600:])
    assert variable in p.stderr and value in p.stderr, p.stderr[-600:]
    # Nothing was started or created.
    assert not os.path.exists(os.path.join(str(tmp_path), "n")), "the store was created"


def test_flag_wins_over_an_invalid_variable(tmp_path):
    """The flag is what the operator typed last: a bad variable under a good flag is unused."""
    p = run("qsnode", ["--data", str(tmp_path / "n"), "--role", "replica"], {"QS_ROLE": "Replica"})
    # The replica then needs an upstream: the usage error is about that, not QS_ROLE.
    assert p.returncode == 64, p.stderr
    assert "QS_ROLE" not in p.stderr and "upstream" in p.stderr, p.stderr
