#!/usr/bin/env python3
"""Reads the executables' --help: every option, its QS_* variable, default and text.

Shared by scripts/gen-operations-doc.sh (the tables of docs/operations.md) and
Tests/deploy (deploy/ and the Dockerfile use only flags and variables that exist).

    python3 scripts/qshelp.py BIN_DIR [EXECUTABLE…]     prints the options as JSON

Without EXECUTABLE names it reads the Dockerfile's `ARG EXECUTABLES="…"` list.
"""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = re.compile(r"^([A-Z][A-Z ]*):\s*$")
ENTRY = re.compile(r"^  (\S.*)$")
LABEL_WIDTH = 26  # ArgumentParser: names in columns 2-25, text from column 26
CONTINUATION = re.compile(r"^\s{6,}(\S.*)$")
VARIABLE = re.compile(r"\bQS_[A-Z0-9_]*[A-Z0-9]\b")


def dockerfile_executables(path=os.path.join(ROOT, "Dockerfile")):
    """The names of the Dockerfile's `ARG EXECUTABLES="…"` line."""
    with open(path) as f:
        for line in f:
            m = re.match(r'^ARG EXECUTABLES="(.*)"\s*$', line)
            if m:
                return m.group(1).split()
    raise SystemExit("no ARG EXECUTABLES=\"…\" line in " + path)


def run_help(binary, args):
    """The help text, run without any QS_* variable so defaults show as built."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QS_")}
    env["COLUMNS"] = "80"
    p = subprocess.run([binary] + args + ["--help"], env=env, capture_output=True, text=True, timeout=30)
    text = p.stdout or p.stderr
    if "OPTIONS:" not in text and "SUBCOMMANDS:" not in text:
        raise RuntimeError("%s %s --help printed no options: %s" % (binary, " ".join(args), text[:400]))
    return text


def parse_sections(text):
    """{section: [(synopsis, description)]} for OPTIONS, ARGUMENTS and SUBCOMMANDS."""
    sections, current, entries = {}, None, None
    for line in text.splitlines():
        m = SECTION.match(line)
        if m:
            current = m.group(1)
            entries = sections.setdefault(current, [])
            continue
        if entries is None or not line.strip():
            continue
        c = CONTINUATION.match(line)
        if c and entries:
            syn, desc = entries[-1]
            entries[-1] = (syn, (desc + " " + c.group(1)).strip())
            continue
        if ENTRY.match(line):
            label, text = line, ""
            if len(line) > LABEL_WIDTH and line[LABEL_WIDTH - 1] == " " and line[LABEL_WIDTH] not in " <-[":
                label, text = line[:LABEL_WIDTH], line[LABEL_WIDTH:]
            entries.append((label.strip(), text.strip()))
    return sections


def option(synopsis, description, kind):
    """One option: names, value placeholder, variable, default, text."""
    names = [n for n in re.findall(r"(?:^|, )(-{1,2}[A-Za-z][\w-]*)", synopsis)]
    placeholder = re.search(r"<[^>]+>", synopsis)
    variables = VARIABLE.findall(description)
    default = re.search(r"\((?:values: [^;)]*; )?default: ([^)]*)\)", description)
    values = re.search(r"\(values: ([^;)]*)[;)]", description)
    text = re.sub(r"\s*\(env:\s*QS_[A-Z0-9_]+\)", "", description)
    text = re.sub(r"\s*\((?:values: [^)]*|default: [^)]*)\)", "", text)
    text = re.sub(r"\s*\(QS_[A-Z0-9_]+(?:=1)?\)", "", text)  # fakekt: "(QS_FAKEKT_TH)"
    text = re.sub(r"\(QS_[A-Z0-9_]+(?:=1)?; ", "(", text).strip()
    return {
        "kind": kind,
        "names": names if kind == "option" else [synopsis],
        "value": placeholder.group(0) if placeholder and kind == "option" else None,
        "variable": variables[0] if variables else None,
        "default": default.group(1).strip() if default else None,
        "values": values.group(1).strip() if values else None,
        "text": text,
    }


def read_command(binary, args):
    text = run_help(binary, args)
    sections = parse_sections(text)
    opts = [option(s, d, "option") for s, d in sections.get("OPTIONS", [])]
    opts += [option(s, d, "argument") for s, d in sections.get("ARGUMENTS", [])]
    overview = re.search(r"OVERVIEW: (.*?)(?:\n\n|$)", text, re.S)
    subcommands = [s for s, _ in sections.get("SUBCOMMANDS", []) if re.fullmatch(r"[a-z][\w-]*", s)]
    return {
        "overview": " ".join(overview.group(1).split()) if overview else "",
        "options": opts,
        "variables": sorted(set(v for v in VARIABLE.findall(text) if not v.endswith("_"))),
    }, subcommands


def read_all(bin_dir, executables=None):
    """{executable: {command path ("" for the root command): command}}"""
    result = {}
    for exe in executables or dockerfile_executables():
        binary = os.path.join(bin_dir, exe)
        commands = {}
        pending = [[]]
        while pending:  # subcommands, and theirs (qsctl feed show)
            path = pending.pop(0)
            commands[" ".join(path)], subs = read_command(binary, path)
            pending += [path + [sub] for sub in subs]
        result[exe] = commands
    return result


def flags_of(commands):
    """Every flag name an executable takes, its subcommands' included."""
    return {n for c in commands.values() for o in c["options"] if o["kind"] == "option" for n in o["names"]}


def variables_of(commands):
    """Every QS_* variable an executable's help names."""
    return {v for c in commands.values() for v in c["variables"]}


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    json.dump(read_all(sys.argv[1], sys.argv[2:] or None), sys.stdout, indent=1)
    print()
