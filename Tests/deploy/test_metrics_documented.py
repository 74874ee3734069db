"""Every metric the daemons really serve on /metrics is documented, with its type.

Starts a root, a replica serving memcached and KT HTTP reads, and a qsktbridge following a
ulog directory, scrapes each /metrics and compares the names and types with the table that
scripts/gen-operations-doc.sh writes from Sources/ and docs/metrics.tsv.
"""
import os
import shutil
import sys
import tempfile
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import operations_doc  # noqa: E402
from qs_ports import port as listener_port, start, stop_all  # noqa: E402  (Tests/ is on the path: Tests/conftest.py)

BIN_DIR = os.environ.get("QS_BIN_DIR", os.path.join(ROOT, ".build", "debug"))




def scrape(port, deadline):
    while True:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=2) as r:
                text = r.read().decode()
            return {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="module")
def served():
    work = tempfile.mkdtemp(prefix="qs-metrics-")
    quiet = ["--log-level", "error"]
    ports = {}
    procs = []
    try:
        deadline = time.time() + 20
        proc, listeners = start([os.path.join(BIN_DIR, "qsnode"), "--data", os.path.join(work, "root"),
                                 "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"] + quiet)
        procs.append(proc)
        ports.update(root=listener_port(listeners, "write"), root_admin=listener_port(listeners, "admin"))
        proc, listeners = start([os.path.join(BIN_DIR, "qsnode"), "--role", "replica",
                                 "--upstream", "127.0.0.1:%d" % ports["root"],
                                 "--data", os.path.join(work, "replica"),
                                 "--listen", "127.0.0.1:0", "--memcached", "127.0.0.1:0",
                                 "--kt-http", "127.0.0.1:0", "--admin", "127.0.0.1:0"] + quiet)
        procs.append(proc)
        ports["replica_admin"] = listener_port(listeners, "admin")
        proc, listeners = start([os.path.join(BIN_DIR, "qsktbridge"), "--root", "127.0.0.1:%d" % ports["root"],
                                 "--source", "ulog:" + os.path.join(ROOT, "Fixtures", "kt", "basic", "ulog"),
                                 "--db-map", "0=,1=aux/", "--admin", "127.0.0.1:0"] + quiet)
        procs.append(proc)
        ports["bridge_admin"] = listener_port(listeners, "admin")
        result = {}
        for name in ("root_admin", "replica_admin", "bridge_admin"):
            result[name] = scrape(ports[name], deadline)
        yield result
    finally:
        problems = stop_all(reversed(procs))  # the bridge first, so it is not left retrying a stopped root
        shutil.rmtree(work, ignore_errors=True)
        assert not problems, problems


def documented():
    return {name: kind for name, kind, _, _ in operations_doc.declared_metrics()}


@pytest.mark.parametrize("daemon", ["root_admin", "replica_admin", "bridge_admin"])
def test_every_served_metric_is_documented_with_its_type(served, daemon):
    docs = documented()
    described = operations_doc.described_metrics()
    assert served[daemon], "%s serves metrics" % daemon
    for name, kind in served[daemon].items():
        assert name in docs and name in described, "%s serves %s, which docs/operations.md does not list" % (daemon, name)
        assert docs[name] == kind, "%s is a %s, documented as a %s" % (name, kind, docs[name])


def test_replica_serves_its_lag_and_root_age(served):
    for name in ("qs_replica_lag_entries", "qs_replica_root_age_seconds", "qs_replica_head_index"):
        assert name in served["replica_admin"]


def test_bridge_serves_its_lag(served):
    assert served["bridge_admin"].get("qs_bridge_lag_seconds") == "gauge"
