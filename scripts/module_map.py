#!/usr/bin/env python3
"""The module map: every target of Package.swift, its purpose and its dependencies.

    python3 scripts/module_map.py              rewrite the table of docs/architecture.md
    python3 scripts/module_map.py --check      exit 1 if the table is stale or a rule is broken

A target's purpose is the `//` comment right above it in Package.swift. The check also
holds the package's shape (Tests/deploy/test_module_map.py runs it under `make test`):
every module a file imports is declared by its target, the libraries import neither
ArgumentParser nor Prometheus, and no file locks with Synchronization's Mutex (its futex is
invisible to ThreadSanitizer, so `make tsan` would report every lock: use NIOLockedValueBox).
"""
import json
import os
import re
import subprocess
import tempfile
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "architecture.md")
BEGIN, END = "<!-- generated:modules -->", "<!-- end:modules -->"
# Modules of the toolchain, not of a package: never declared.
SYSTEM = {"Foundation", "FoundationNetworking", "FoundationEssentials", "Glibc", "Darwin", "Dispatch",
          "XCTest", "Synchronization", "_Concurrency", "Observation"}
# Libraries that must not know the command line or the exporter.
LIBRARIES_WITHOUT_CLI = ["QSModel", "QSBytes", "QSStore", "QSWire", "QSNet", "QSClient", "QSFeed", "QSKTFeed",
                         "QSCaptures", "QSNode", "QSReads", "QSRecording", "KTFormats", "FakeKT"]


def package():
    # A scratch path of its own: with the default one, `dump-package` waits for the lock of a
    # build running in .build (minutes), though it only reads the manifest.
    with tempfile.TemporaryDirectory(prefix="module-map-") as scratch:
        out = subprocess.run(["swift", "package", "--scratch-path", scratch, "dump-package"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def dependencies(target):
    deps = []
    for d in target.get("dependencies", []):
        for kind in ("byName", "target", "product"):
            if kind in d:
                deps.append(d[kind][0])
    return deps


def purposes():
    """{target: the comment lines right above its declaration in Package.swift}."""
    lines = open(os.path.join(ROOT, "Package.swift")).read().split("\n")
    out = {}
    for i, line in enumerate(lines):
        m = re.search(r'name: "([^"]+)"', line)
        if not m or ".executable(" in line or "package:" in line:
            continue
        j = i if re.match(r"\s*\.\w+\(name:", line) else i - 1  # `.target(name:` or `.target(` then `name:`
        comment = []
        k = j - 1
        while k >= 0 and lines[k].strip().startswith("//"):
            comment.insert(0, lines[k].strip()[2:].strip())
            k -= 1
        out[m.group(1)] = " ".join(comment)
    return out


def source_dir(target):
    base = "Tests" if target["type"] == "test" else "Sources"
    return os.path.join(ROOT, target.get("path") or os.path.join(base, target["name"]))


def imports(target):
    found = {}
    for path in swift_files(target):
        for line in open(path, encoding="utf-8"):
            m = re.match(r"^\s*(?:@testable\s+|@preconcurrency\s+|public\s+|internal\s+|package\s+)*import\s+(?:struct\s+|enum\s+|class\s+|func\s+)?(\w+)", line)
            if m:
                found.setdefault(m.group(1), os.path.relpath(path, ROOT))
    return found


def table(pkg):
    names = {t["name"] for t in pkg["targets"]}
    why = purposes()
    rows = ["| target | kind | purpose | depends on |", "|--------|------|---------|------------|"]
    for t in pkg["targets"]:
        deps = dependencies(t)
        ours = [d for d in deps if d in names]
        theirs = [d for d in deps if d not in names]
        dep_text = ", ".join("`%s`" % d for d in ours)
        if theirs:
            dep_text += ("; " if ours else "") + ", ".join(theirs)
        kind = {"regular": "library", "system": "system library", "executable": "executable", "test": "tests"}[t["type"]]
        rows.append("| `%s` | %s | %s | %s |" % (t["name"], kind, why.get(t["name"], "").replace("|", "\\|"), dep_text or "—"))
    return "\n".join(rows)


def swift_files(target):
    for dirpath, _, files in os.walk(source_dir(target)):
        for f in files:
            if f.endswith(".swift"):
                yield os.path.join(dirpath, f)


def problems(pkg):
    out = []
    for t in pkg["targets"]:
        if t["type"] == "system":
            continue
        for path in swift_files(t):
            if re.search(r"\bMutex\s*[<(]", open(path, encoding="utf-8").read()):
                out.append("%s uses Synchronization's Mutex, which ThreadSanitizer cannot see (scripts/tsan-suppressions.txt): "
                           "use NIOLockedValueBox" % os.path.relpath(path, ROOT))
        declared = set(dependencies(t))
        for module, where in sorted(imports(t).items()):
            if module in SYSTEM or module == t["name"]:
                continue
            if module not in declared:
                out.append("%s imports %s (%s) but Package.swift does not declare it" % (t["name"], module, where))
            if t["name"] in LIBRARIES_WITHOUT_CLI and module in ("ArgumentParser", "Prometheus"):
                out.append("library %s imports %s (%s): command-line and exporter code belong to QSDaemon or the executables"
                           % (t["name"], module, where))
        if not purposes().get(t["name"]):
            out.append("target %s has no purpose comment above it in Package.swift" % t["name"])
    return out


def main():
    check = "--check" in sys.argv
    pkg = package()
    doc = open(DOC).read()
    if BEGIN not in doc or END not in doc:
        sys.exit("docs/architecture.md has no %s … %s block" % (BEGIN, END))
    if doc.count(BEGIN) != 1 or doc.count(END) != 1:
        sys.exit("docs/architecture.md holds the %s … %s block %d times: the document is doubled, keep one copy"
                 % (BEGIN, END, doc.count(BEGIN)))
    new = doc[:doc.index(BEGIN) + len(BEGIN)] + "\n" + table(pkg) + "\n" + doc[doc.index(END):]
    errors = problems(pkg)
    if check:
        if new != doc:
            errors.append("docs/architecture.md's module table is stale: run python3 scripts/module_map.py")
        for e in errors:
            print(e)
        sys.exit(1 if errors else 0)
    if new != doc:
        open(DOC, "w").write(new)
        print("docs/architecture.md updated")
    for e in errors:
        print("warning:", e)


if __name__ == "__main__":
    main()
