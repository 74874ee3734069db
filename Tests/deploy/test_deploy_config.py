"""deploy/ and the Dockerfile use only flags and variables the executables have.

Reads every container of deploy/compose.yaml and deploy/k8s/*.yaml (its executable, the
flags of its command and args, the QS_* names of its environment) and the Dockerfile's ENV
and CMD, and checks each against the executables' --help. Also checks that the image ships
every executable product of Package.swift and that docs/operations.md is current.

    QS_BIN_DIR=.build/debug python3 -m pytest -q Tests/deploy
"""
import glob
import os
import re
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import qshelp  # noqa: E402

BIN_DIR = os.environ.get("QS_BIN_DIR", os.path.join(ROOT, ".build", "debug"))
EXECUTABLES = qshelp.dockerfile_executables()
# Commands in the image that are not executables of the package.
IMAGE_TOOLS = {"qs-healthcheck"}


@pytest.fixture(scope="module")
def helps():
    return qshelp.read_all(BIN_DIR, EXECUTABLES)


def containers():
    """(where, executable, args, variables) for every container deploy/ runs."""
    found = []
    with open(os.path.join(ROOT, "deploy", "compose.yaml")) as f:
        compose = yaml.safe_load(f)
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        names = list(env) if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        command = service.get("command") or ["qsnode"]
        found.append(("compose.yaml service %s" % name, command[0], command[1:], names))
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy", "k8s", "*.yaml"))):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
                for c in spec.get("containers", []) + spec.get("initContainers", []):
                    command = (c.get("command") or ["qsnode"]) + (c.get("args") or [])
                    names = [e["name"] for e in c.get("env", [])]
                    where = "k8s/%s %s/%s" % (os.path.basename(path), doc["metadata"]["name"], c["name"])
                    found.append((where, command[0], command[1:], names))
    return found


def dockerfile():
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read().replace("\\\n", " ")
    runtime = text[text.rindex("\nFROM "):]  # the runtime stage: what users get
    env = [n for line in re.findall(r"^ENV (.*)$", runtime, re.M) for n in re.findall(r"\b(QS_\w+)=", line)]
    cmd = re.findall(r'^CMD \["([^"]+)"', runtime, re.M)
    health = re.findall(r'HEALTHCHECK .*CMD \["([^"]+)"', runtime)
    return env, cmd, health


def test_deploy_has_the_migration_layout():
    for prefix in ("compose.yaml", "k8s/"):
        run = [(exe, env) for where, exe, _, env in containers() if where.startswith(prefix)]
        assert any(exe == "qsktbridge" for exe, _ in run), prefix + ": a bridge"
        assert any(exe == "fakekt" for exe, _ in run), prefix + ": a KT server beside it"
        assert any(exe == "qsnode" and "QS_UPSTREAM" not in env for exe, env in run), prefix + ": a root"
        assert any(exe == "qsnode" and "QS_UPSTREAM" in env for exe, env in run), prefix + ": replicas"
        assert sum(exe == "qsnode" and "QS_UPSTREAM" not in env for exe, env in run) == 2, \
            prefix + ": the root L and the new root N of docs/runbook.md"


def test_deploy_mirrors_the_root_into_the_new_root():
    """The runbook's layout: N kept equal to L by a compatible mirror bridge, which presents
    L's replication token and N's write token."""
    for prefix in ("compose.yaml", "k8s/"):
        mirrors = [env for where, exe, env, _, _ in environments() if where.startswith(prefix) and exe == "qsqsbridge"]
        assert len(mirrors) == 1, prefix + ": one mirror bridge"
        env = mirrors[0]
        assert env.get("QS_MODE") == "compatible", prefix + ": the mirror bridge copies entry for entry"
        assert env.get("QS_SOURCE", "").startswith("qs://"), prefix + ": it reads a QS node"
        assert env["QS_SOURCE"][len("qs://"):] != env.get("QS_ROOT"), prefix + ": from L into N"
        assert env.get("QS_SOURCE_TOKEN_FILE") and env.get("QS_WRITE_TOKEN_FILE"), prefix + ": with tokens"


@pytest.mark.parametrize("where,exe,args,variables", containers(), ids=lambda v: v if isinstance(v, str) else None)
def test_deploy_container_uses_existing_flags_and_variables(helps, where, exe, args, variables):
    assert exe in helps, "%s runs %s, which the image does not ship (Dockerfile EXECUTABLES)" % (where, exe)
    flags = qshelp.flags_of(helps[exe])
    known = qshelp.variables_of(helps[exe])
    for arg in args:
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            assert name in flags, "%s: %s has no flag %s (its --help: %s)" % (where, exe, name, sorted(flags))
    for v in variables:
        if v.startswith("QS_"):
            assert v in known, "%s: %s has no variable %s (its --help: %s)" % (where, exe, v, sorted(known))


def test_dockerfile_env_and_commands_exist(helps):
    env, cmd, health = dockerfile()
    every = set().union(*(qshelp.variables_of(c) for c in helps.values()))
    assert env, "the runtime stage sets QS_* defaults"
    for v in env:
        assert v in every, "Dockerfile ENV %s is no executable's variable" % v
    assert cmd and all(c in EXECUTABLES for c in cmd), "Dockerfile CMD %s is not a shipped executable" % cmd
    assert health == ["qs-healthcheck"], "HEALTHCHECK runs qs-healthcheck"
    assert os.access(os.path.join(ROOT, "deploy", "image", "qs-healthcheck"), os.X_OK)


def test_health_checks_in_deploy_use_image_tools():
    with open(os.path.join(ROOT, "deploy", "compose.yaml")) as f:
        compose = yaml.safe_load(f)
    for name, service in compose["services"].items():
        test = (service.get("healthcheck") or {}).get("test")
        if test:
            assert test[0] == "CMD" and test[1] in IMAGE_TOOLS | set(EXECUTABLES), (name, test)


def test_image_ships_every_executable_product():
    with open(os.path.join(ROOT, "Package.swift")) as f:
        products = re.findall(r'\.executable\(name: "([^"]+)"', f.read())
    assert sorted(products) == sorted(EXECUTABLES), \
        "Dockerfile ARG EXECUTABLES %s differs from Package.swift's executables %s" % (EXECUTABLES, products)


def test_every_daemon_in_deploy_has_probes():
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy", "k8s", "*.yaml"))):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
                for c in spec.get("containers", []):
                    if c["command"][0] == "fakekt":
                        continue
                    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", (path, c["name"])
                    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", (path, c["name"])
                    assert c["securityContext"]["readOnlyRootFilesystem"] is True
                    assert "memory" in c["resources"]["limits"]
                    if c["command"][0] == "qsktbridge":
                        assert c["resources"]["limits"]["memory"] == "256Mi"


def test_operations_doc_is_current():
    p = subprocess.run([os.path.join(ROOT, "scripts", "gen-operations-doc.sh"), "--check", BIN_DIR],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]


def environments():
    """(where, executable, {QS_NAME: value}, mounted secret paths) for every container deploy/ runs."""
    found = []
    with open(os.path.join(ROOT, "deploy", "compose.yaml")) as f:
        compose = yaml.safe_load(f)
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        if not isinstance(env, dict):
            env = dict(e.split("=", 1) for e in env)
        secrets = ["/run/secrets/%s" % s for s in service.get("secrets") or []]
        found.append(("compose.yaml service %s" % name, (service.get("command") or ["qsnode"])[0], env, secrets, compose.get("secrets", {})))
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy", "k8s", "*.yaml"))):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
                volumes = {v["name"]: v for v in spec.get("volumes", [])}
                for c in spec.get("containers", []):
                    env = {e["name"]: e.get("value", "") for e in c.get("env", [])}
                    mounts = [m["mountPath"] for m in c.get("volumeMounts", []) if "secret" in volumes.get(m["name"], {})]
                    where = "k8s/%s %s/%s" % (os.path.basename(path), doc["metadata"]["name"], c["name"])
                    found.append((where, c["command"][0], env, mounts, None))
    return found


def loopback(address):
    host = address.rsplit(":", 1)[0].strip("[]")
    return address.startswith("unix:") or host in ("localhost", "::1") or host.startswith("127.")


@pytest.mark.parametrize("where,exe,env,secrets,declared", environments(), ids=lambda v: v if isinstance(v, str) and " " in v else None)
def test_deploy_binds_nothing_beyond_loopback_without_its_token(where, exe, env, secrets, declared):
    if exe == "fakekt":
        return  # the KT stand-in: Kyoto Tycoon has no tokens
    def token(variable):
        path = env.get(variable)
        assert path, "%s: %s without %s" % (where, exe, variable)
        assert any(path == s or path.startswith(s.rstrip("/") + "/") for s in secrets), \
            "%s: %s=%s is not a mounted secret (%s)" % (where, variable, path, secrets)
    if exe == "qsnode" and not loopback(env.get("QS_LISTEN", "127.0.0.1:7400")):
        token("QS_REPLICATION_TOKEN_FILE")
        if env.get("QS_ROLE", "root") == "root":
            token("QS_WRITE_TOKEN_FILE")
    if not loopback(env.get("QS_ADMIN", "127.0.0.1:9400")):
        token("QS_ADMIN_TOKEN_FILE")
    if exe == "qsqsbridge":
        token("QS_SOURCE_TOKEN_FILE")
        token("QS_WRITE_TOKEN_FILE")
    if env.get("QS_UPSTREAM"):
        token("QS_UPSTREAM_TOKEN_FILE")
        assert env["QS_UPSTREAM_TOKEN_FILE"] == env["QS_REPLICATION_TOKEN_FILE"], \
            "%s: a replica presents upstream the replication token its own subscribers present" % where
    if declared is not None:
        for s in secrets:
            assert os.path.basename(s) in declared, "%s: secret %s is not declared" % (where, s)


def test_image_binds_nothing_beyond_loopback():
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        runtime = f.read().replace("\\\n", " ")
    runtime = runtime[runtime.rindex("\nFROM "):]
    values = dict(re.findall(r"\b(QS_\w+)=(\S+)", " ".join(re.findall(r"^ENV (.*)$", runtime, re.M))))
    for variable in ("QS_ADMIN", "QS_LISTEN"):
        if variable in values:
            assert loopback(values[variable]), "Dockerfile ENV %s=%s binds beyond loopback without a token" % (variable, values[variable])
