#!/usr/bin/env python3
"""cargo-mutants' mutants against the loom models.

cargo-mutants tests the package it mutates (here `evtchn`); the loom models
live in the workspace member `loom-tests`, and cargo-mutants 27 runs the
mutated package's tests whatever `--test-package` says. This script takes
the mutants from cargo-mutants itself (`cargo mutants --list --diff --json`,
with `.cargo/mutants.toml`'s exclusions) and runs each against the loom
models it is given, in a copy of the tree:

    python3 mutation/loom_pass.py --re 'try_unmask' -f src/abi/twolevel.rs \\
        --test f13_guest_unmask --out mutation/cargo-mutants/4-loom-pass

It writes cargo-mutants' lists (`caught.txt`, `missed.txt`, `timeout.txt`,
`unviable.txt`, by cargo-mutants' mutant names) and `caught-by.txt` (the
models that failed) to `--out`, with the `command` that made them, so that
`sweep.py report --cargo-mutants` reads them like any other run. The
unmutated models must pass first. A mutant whose models do not build is
unviable; one that fails a model is caught; one that runs past `--timeout`
seconds is a timeout.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "target", "mutation", "loom-pass")
TREE = os.path.join(WORK, "tree")


def list_mutants(files, regex):
    cmd = ["cargo", "mutants", "--list", "--diff", "--json"]
    for f in files:
        cmd += ["-f", f]
    if regex:
        cmd += ["--re", regex]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def copy_tree():
    """The tracked files as they are in the working tree (edits included)."""
    if os.path.exists(TREE):
        shutil.rmtree(TREE)
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.split(b"\0")
    for f in files:
        if not f:
            continue
        src = os.path.join(ROOT, f.decode())
        if not os.path.isfile(src):
            continue
        dst = os.path.join(TREE, f.decode())
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst)


def cargo(tests, bound, timeout, no_run=False):
    env = dict(os.environ)
    env["RUSTFLAGS"] = "--cfg loom -C debug-assertions"
    env["LOOM_MAX_PREEMPTIONS"] = str(bound)
    cmd = ["cargo", "test", "-p", "loom-tests", "--release", "--target-dir",
           os.path.join(WORK, "target")]
    for t in tests:
        cmd += ["--test", t]
    cmd += ["--no-run"] if no_run else ["--no-fail-fast"]
    try:
        p = subprocess.run(cmd, cwd=TREE, env=env, capture_output=True, text=True,
                           timeout=None if no_run else timeout)
    except subprocess.TimeoutExpired:
        return None, ""
    return p.returncode, p.stdout + p.stderr


def failed_tests(log):
    return sorted(set(re.findall(r"^test (\S+) (?:- should panic )?\.\.\. FAILED$", log, re.M)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--re", dest="regex", help="cargo-mutants' --re: the mutants to run")
    ap.add_argument("-f", dest="files", action="append", default=[], help="source files")
    ap.add_argument("--test", dest="tests", action="append", required=True,
                    help="a loom model file (loom-tests/tests/NAME.rs)")
    ap.add_argument("--bound", type=int, default=2, help="LOOM_MAX_PREEMPTIONS")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per mutant")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    mutants = list_mutants(args.files, args.regex)
    print(f"{len(mutants)} mutants", file=sys.stderr)
    copy_tree()
    if cargo(args.tests, args.bound, args.timeout, no_run=True)[0] != 0:
        sys.exit("the unmutated models do not build")
    rc, log = cargo(args.tests, args.bound, args.timeout)
    if rc != 0:
        sys.exit("the unmutated models fail:\n" + "\n".join(failed_tests(log)))

    lists = {k: [] for k in ("caught", "missed", "timeout", "unviable")}
    caught_by = []
    for m in mutants:
        path = os.path.join(TREE, m["file"])
        original = open(path).read()
        p = subprocess.run(["patch", "-s", path], input=m["diff"], text=True,
                           capture_output=True)
        try:
            if p.returncode != 0:
                sys.exit(f"the diff of {m['name']} does not apply: {p.stdout}{p.stderr}")
            if cargo(args.tests, args.bound, args.timeout, no_run=True)[0] != 0:
                kind = "unviable"
            else:
                rc, log = cargo(args.tests, args.bound, args.timeout)
                kind = "timeout" if rc is None else "missed" if rc == 0 else "caught"
                if kind == "caught":
                    caught_by.append(f"{m['name']}\t{' '.join(failed_tests(log))}")
        finally:
            open(path, "w").write(original)
        lists[kind].append(m["name"])
        print(f"{kind:8} {m['name']}", file=sys.stderr)

    os.makedirs(args.out, exist_ok=True)
    for kind, names in lists.items():
        with open(os.path.join(args.out, kind + ".txt"), "w") as f:
            f.writelines(n + "\n" for n in names)
    with open(os.path.join(args.out, "caught-by.txt"), "w") as f:
        f.writelines(c + "\n" for c in caught_by)
    argv = ["python3", "mutation/loom_pass.py"] + sys.argv[1:]
    with open(os.path.join(args.out, "command"), "w") as f:
        f.write(shlex.join(argv) + "\n")


if __name__ == "__main__":
    main()
