#!/usr/bin/env python3
"""Writes the generated tables of docs/operations.md: every flag of every executable with
its QS_* variable (from --help), and every metric declared in Sources/ with its unit and
meaning (from docs/metrics.tsv). Run through scripts/gen-operations-doc.sh.

    operations_doc.py BIN_DIR [--check]

Only the parts between `<!-- generated:NAME -->` and `<!-- end generated:NAME -->` change.
With --check nothing is written: exits 1 and shows the difference when the file is stale.
"""
import difflib
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qshelp  # noqa: E402

ROOT = qshelp.ROOT
DOC = os.path.join(ROOT, "docs", "operations.md")
METRICS_TSV = os.path.join(ROOT, "docs", "metrics.tsv")
DECLARATION = re.compile(r'\b(Counter|Gauge|Meter|Timer|Recorder)\(label: "([^"]+)"(?:, dimensions: \[\("(\w+)")?')
# Where each module's metrics are served (/metrics on --admin).
EXPORTED_BY = {
    "QSNode": "qsnode", "QSReads": "qsnode", "QSFeed": "qsktbridge, qsqsbridge",
    # The root link's metrics: every writer to a root (the bridges and qsrest).
    "QSFeed/RootLinkMetrics.swift": "qsktbridge, qsqsbridge, qsrest",
    "QSKTFeed": "qsktbridge", "FakeKT": "fakekt (reports only)", "QSRest": "qsrest",
}
KIND = {"Counter": "counter", "Gauge": "gauge", "Meter": "gauge", "Timer": "histogram", "Recorder": "histogram"}


def cell(text):
    return (text or "").replace("|", "\\|").replace("\n", " ")


def flags_section(helps):
    out = []
    for exe, commands in helps.items():
        for path, command in commands.items():
            name = exe + (" " + path if path else "")
            out.append("### `%s`\n" % name)
            if command["overview"]:
                out.append(command["overview"] + "\n")
            rows = [o for o in command["options"] if "--help" not in o["names"]]
            if not rows:
                out.append("No options.\n")
                continue
            out.append("| flag | variable | default | meaning |")
            out.append("|------|----------|---------|---------|")
            for o in rows:
                flag = ", ".join(o["names"]) + (" " + o["value"] if o["value"] else "")
                default = o["default"] or ""
                if o["values"]:
                    default = (default + " (" if default else "(") + "one of " + o["values"] + ")"
                out.append("| `%s` | %s | %s | %s |" % (
                    cell(flag), "`%s`" % o["variable"] if o["variable"] else "—", cell(default), cell(o["text"])))
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def declared_metrics():
    """[(name, kind, dimension, module)] from Sources/, interpolations expanded."""
    found = []
    sources = os.path.join(ROOT, "Sources")
    texts = {}
    for dirpath, _, files in os.walk(sources):
        for f in files:
            if f.endswith(".swift"):
                p = os.path.join(dirpath, f)
                with open(p, encoding="utf-8") as fh:
                    texts[p] = fh.read()
    everything = "\n".join(texts.values())
    for p, text in sorted(texts.items()):
        rel = os.path.relpath(p, sources)
        module = rel if rel in EXPORTED_BY else rel.split(os.sep)[0]
        for kind, label, dimension in DECLARATION.findall(text):
            names = [label]
            for var in re.findall(r"\\\((\w+)\)", label):
                values = sorted(set(re.findall(r"\b%s: \"(\w+)\"" % var, everything)))
                if not values:
                    raise SystemExit("metric %s in %s: no value found for \\(%s)" % (label, p, var))
                names = [n.replace("\\(%s)" % var, v) for n in names for v in values]
            for n in names:
                found.append((n, KIND[kind], dimension or None, module))
    unique = {}
    for n, k, d, m in found:
        unique.setdefault(n, (n, k, d, m))
    return list(unique.values())


def described_metrics():
    rows = {}
    with open(METRICS_TSV, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            name, unit, meaning = line.rstrip("\n").split("\t")
            rows[name] = (unit, meaning)
    return rows


def metrics_section():
    declared = declared_metrics()
    described = described_metrics()
    names = {m[0] for m in declared}
    missing = sorted(names - set(described))
    stale = sorted(set(described) - names)
    if missing or stale:
        msg = []
        if missing:
            msg.append("metrics declared in Sources/ without a line in docs/metrics.tsv: " + ", ".join(missing))
        if stale:
            msg.append("lines of docs/metrics.tsv for metrics no longer declared: " + ", ".join(stale))
        raise SystemExit("\n".join(msg) + "\n(edit docs/metrics.tsv, then run scripts/gen-operations-doc.sh)")
    out = ["| metric | type | unit | served by | meaning |", "|--------|------|------|-----------|---------|"]
    for name, kind, dimension, module in declared:
        unit, meaning = described[name]
        label = "`%s`" % (name + ("{%s}" % dimension if dimension else ""))
        out.append("| %s | %s | %s | %s | %s |" % (label, kind, cell(unit), EXPORTED_BY.get(module, module), cell(meaning)))
    return "\n".join(out) + "\n"


def replace(doc, name, body):
    begin, end = "<!-- generated:%s -->" % name, "<!-- end generated:%s -->" % name
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(doc):
        raise SystemExit("docs/operations.md has no %s … %s" % (begin, end))
    return pattern.sub(lambda _: begin + "\n" + body + end, doc)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    check = "--check" in sys.argv[1:]
    if len(args) != 1:
        raise SystemExit(__doc__)
    with open(DOC, encoding="utf-8") as f:
        old = f.read()
    new = replace(old, "flags", flags_section(qshelp.read_all(args[0])))
    new = replace(new, "metrics", metrics_section())
    if check:
        if new != old:
            sys.stdout.writelines(difflib.unified_diff(
                old.splitlines(True), new.splitlines(True), "docs/operations.md", "generated"))
            print("docs/operations.md is stale: run scripts/gen-operations-doc.sh and commit it")
            sys.exit(1)
        print("docs/operations.md is up to date")
    elif new != old:
        with open(DOC, "w", encoding="utf-8") as f:
            f.write(new)
        print("docs/operations.md updated")
    else:
        print("docs/operations.md unchanged")


if __name__ == "__main__":
    main()
