#!/usr/bin/env python3
"""The ordering sweep: every memory ordering in src/ weakened one step, and
every store-load fence removed, one mutant at a time, against the loom models
(and, for what loom cannot judge, Miri's weak-memory emulation on the litmus
tests).

It is a mutant schema: the script copies the tracked sources to
target/mutation/tree, rewrites every ordering argument `X` to
`crate::sync::mutant::ord(ID, X)` and every `store_load_fence()` call to
`crate::sync::mutant::fence(ID)`, and builds the models once. The mutant to
apply is chosen at run time by `EVTCHN_MUTANT=ID:Ordering` (or `ID:drop` for a
fence); with the variable unset the tree behaves as src/ does.

    python3 mutation/sweep.py list                  # the sites and mutants
    python3 mutation/sweep.py run [--jobs N] [--filter RE] [--out F] [--fresh]
    python3 mutation/sweep.py miri [--filter RE] [--seeds N] [--out F]
    python3 mutation/sweep.py report [--out F] [--before F] > mutation/RESULTS.md

`run` first records which positive models execute each site (coverage:
`EVTCHN_MUTANT_TRACE`), then runs each mutant against the models that cover
it, fastest first, and stops at the first failure. It resumes from the results
file unless `--fresh`. `miri` runs the survivors against the litmus tests
(tests/litmus.rs) under Miri with many schedules. `report` joins the results
with mutation/verdicts.toml (equivalence arguments, plans) into tables.
"""

import argparse
import concurrent.futures as cf
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TREE = os.path.join(ROOT, "target", "mutation", "tree")
BUILD = os.path.join(ROOT, "target", "mutation", "build")
MIRI_BUILD = os.path.join(ROOT, "target", "mutation", "miri")
RESULTS = os.path.join(ROOT, "mutation", "ordering-results.json")
VERDICTS = os.path.join(ROOT, "mutation", "verdicts.toml")

# Files whose orderings are not the core's: the backends themselves, the
# weakening switch (its `Relaxed` is the deliberate weakening).
SKIP_FILES = {"src/sync/mod.rs", "src/sync/model.rs", "src/sync/native.rs", "src/sync/shuttle.rs", "src/weaken.rs"}

ORDS = ("Relaxed", "Acquire", "Release", "AcqRel", "SeqCst")
# One step weaker, by the kind of access (the strongest orderings that are
# still weaker: a mutant that survives here would survive any weaker one).
WEAKER = {
    "load": {"SeqCst": ["Acquire"], "Acquire": ["Relaxed"]},
    "store": {"SeqCst": ["Release"], "Release": ["Relaxed"]},
    "rmw": {
        "SeqCst": ["AcqRel"],
        "AcqRel": ["Acquire", "Release"],
        "Acquire": ["Relaxed"],
        "Release": ["Relaxed"],
    },
    # The failure ordering of a compare-exchange is a load.
    "cas_fail": {"SeqCst": ["Acquire"], "Acquire": ["Relaxed"]},
}
RMW_METHODS = {
    "swap", "fetch_add", "fetch_sub", "fetch_or", "fetch_and", "fetch_xor",
    "fetch_nand", "fetch_max", "fetch_min",
}

# Litmus tests whose Miri outcome depends on the switch itself: with no
# mutant, but the switch set to a key of another length (so other
# allocations, other reused addresses), Miri reports a race in some
# schedules. Their "kills" would prove nothing (README.md, "The second
# checker: Miri").
UNUSABLE_LITMUS = {
    "fifo_control_after_page_vs_raise":
        "with the switch set to a site that does not exist (999:Relaxed), Miri reports a race "
        "on the control block's head in some of 8 schedules; the plain tree passes 32",
}

MUTANT_RS = r'''//! The mutant switch of the ordering sweep (mutation/sweep.py); exists only
//! in the sweep's copy of the tree.
//!
//! The environment is read once, by `init` (called by every test before it
//! starts a thread) or by the first `ord`/`fence`: reading it later from a
//! racing thread would take std's environment lock, whose acquire and
//! release would order the threads and hide the very races Miri looks for.
#![allow(dead_code, clippy::all)]
extern crate std;
use super::Ordering;
use std::string::String;
use std::sync::atomic::{AtomicBool, Ordering as O};
use std::sync::OnceLock;

struct Chosen {
    mutant: Option<(u32, String)>,
    trace: Option<String>,
}

static CHOSEN: OnceLock<Chosen> = OnceLock::new();
static SEEN: [AtomicBool; 4096] = [const { AtomicBool::new(false) }; 4096];

pub(crate) fn init() {
    let _ = chosen();
}

fn chosen() -> &'static Chosen {
    CHOSEN.get_or_init(|| Chosen {
        mutant: std::env::var("EVTCHN_MUTANT").ok().and_then(|v| {
            let (id, what) = v.split_once(':')?;
            Some((id.parse().ok()?, what.into()))
        }),
        trace: std::env::var("EVTCHN_MUTANT_TRACE").ok(),
    })
}

fn trace(id: u32) {
    let Some(path) = &chosen().trace else {
        return;
    };
    if SEEN[id as usize].swap(true, O::Relaxed) {
        return;
    }
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{id}");
    }
}

#[inline(never)]
pub(crate) fn ord(id: u32, original: Ordering) -> Ordering {
    trace(id);
    match &chosen().mutant {
        Some((i, what)) if *i == id => match what.as_str() {
            "Relaxed" => Ordering::Relaxed,
            "Acquire" => Ordering::Acquire,
            "Release" => Ordering::Release,
            "AcqRel" => Ordering::AcqRel,
            "SeqCst" => Ordering::SeqCst,
            _ => original,
        },
        _ => original,
    }
}

#[inline(never)]
pub(crate) fn fence(id: u32) {
    trace(id);
    if matches!(&chosen().mutant, Some((i, w)) if *i == id && w == "drop") {
        return;
    }
    super::store_load_fence();
}
'''


def tracked_files():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [f for f in out.stdout.split("\n") if f]


def blank_comments(text):
    """Comments and string literals replaced by spaces (offsets kept)."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                out[k] = " "
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            for k in range(i, j):
                if out[k] != "\n":
                    out[k] = " "
            i = j
        elif text[i] == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            for k in range(i + 1, min(j, n)):
                if out[k] != "\n":
                    out[k] = " "
            i = j + 1
        else:
            i += 1
    return "".join(out)


def cfg_test_ranges(code):
    """Byte ranges of `#[cfg(test)] mod ... { }` blocks (unit tests)."""
    ranges = []
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", code):
        depth, j = 1, m.end()
        while j < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
        ranges.append((m.start(), j))
    return ranges


def enclosing_call(code, pos):
    """(method name, argument index, call start) of the call whose argument
    list holds `pos`."""
    depth, arg, j = 0, 0, pos - 1
    while j >= 0:
        c = code[j]
        if c in ")]}":
            depth += 1
        elif c in "([{":
            if depth == 0:
                if c != "(":
                    return None, None, None
                k = j - 1
                while k >= 0 and code[k].isspace():
                    k -= 1
                e = k + 1
                while k >= 0 and (code[k].isalnum() or code[k] == "_"):
                    k -= 1
                return code[k + 1:e], arg, j
            depth -= 1
        elif c == "," and depth == 0:
            arg += 1
        j -= 1
    return None, None, None


def classify(code, pos):
    name, arg, start = enclosing_call(code, pos)
    if name == "ord":  # Weakness::ord(Weaken::X, strong): the outer call decides
        ord_start = start
        name, arg, start = enclosing_call(code, start)
        if name is None:
            # `let x = w.ord(..);` then `.op(.., x, ..)`: the use decides.
            line_start = code.rfind("\n", 0, ord_start) + 1
            let = re.search(r"let\s+(\w+)\s*=", code[line_start:ord_start])
            if let is None:
                let = re.search(r"let\s+(\w+)\s*=", code[code.rfind(";", 0, ord_start):ord_start])
            if let is None:
                return None
            end = code.find(";", ord_start)
            use = re.search(r"\b%s\b" % let.group(1), code[end:])
            return classify(code, end + use.start()) if use else None
    if name is None:
        return None
    if name == "load":
        return "load"
    if name == "store":
        return "store"
    if name in RMW_METHODS:
        return "rmw"
    if name in ("compare_exchange", "compare_exchange_weak"):
        return "rmw" if arg == 2 else "cas_fail"
    if name == "fetch_update":
        return "rmw" if arg == 0 else "cas_fail"
    return None


def find_sites():
    """Every ordering argument and fence call in src/, with its mutants."""
    sites = []
    unknown = []
    for f in sorted(tracked_files()):
        if not (f.startswith("src/") and f.endswith(".rs")) or f in SKIP_FILES:
            continue
        text = open(os.path.join(ROOT, f)).read()
        code = blank_comments(text)
        tests = cfg_test_ranges(code)
        for m in re.finditer(r"\b(?:Ordering::)?(Relaxed|Acquire|Release|AcqRel|SeqCst)\b", code):
            if any(a <= m.start() < b for a, b in tests):
                continue
            line_start = code.rfind("\n", 0, m.start()) + 1
            line_end = code.find("\n", m.start())
            line = code[line_start:line_end]
            if line.lstrip().startswith("use "):
                continue
            kind = classify(code, m.start())
            lineno = code.count("\n", 0, m.start()) + 1
            if kind is None:
                unknown.append(f"{f}:{lineno}: {line.strip()}")
                continue
            sites.append({
                "file": f, "line": lineno, "start": m.start(), "end": m.end(),
                "kind": kind, "from": m.group(1),
                "text": text[line_start:line_end].strip(),
            })
        for m in re.finditer(r"\b(?:crate::sync::)?store_load_fence\(\)", code):
            if any(a <= m.start() < b for a, b in tests):
                continue
            lineno = code.count("\n", 0, m.start()) + 1
            line_start = code.rfind("\n", 0, m.start()) + 1
            line_end = code.find("\n", m.start())
            sites.append({
                "file": f, "line": lineno, "start": m.start(), "end": m.end(),
                "kind": "fence", "from": "fence",
                "text": text[line_start:line_end].strip(),
            })
    sites.sort(key=lambda s: (s["file"], s["start"]))
    for i, s in enumerate(sites):
        s["id"] = i + 1
    return sites, unknown


def mutants_of(sites):
    out = []
    for s in sites:
        tos = ["drop"] if s["kind"] == "fence" else WEAKER[s["kind"]].get(s["from"], [])
        for to in tos:
            out.append({
                "key": f"{s['id']}:{to}", "site": s["id"], "file": s["file"],
                "line": s["line"], "kind": s["kind"], "from": s["from"], "to": to,
                "text": s["text"],
            })
    return out


def write_tree(sites, extra=()):
    """The sweep's copy of the tracked files, with the schema applied."""
    if os.path.isdir(TREE):
        shutil.rmtree(TREE)
    for f in tracked_files():
        if f.startswith("target/") or f.startswith("fuzz/") or f.startswith("benches/"):
            continue
        src = os.path.join(ROOT, f)
        if not os.path.isfile(src):
            continue
        dst = os.path.join(TREE, f)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst)
    for f in extra:
        dst = os.path.join(TREE, f)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, f), dst)
    by_file = {}
    for s in sites:
        by_file.setdefault(s["file"], []).append(s)
    for f, ss in by_file.items():
        text = open(os.path.join(ROOT, f)).read()
        for s in sorted(ss, key=lambda s: -s["start"]):
            if s["kind"] == "fence":
                rep = f"crate::sync::mutant::fence({s['id']})"
            else:
                rep = f"crate::sync::mutant::ord({s['id']}, crate::sync::Ordering::{s['from']})"
            text = text[:s["start"]] + rep + text[s["end"]:]
        open(os.path.join(TREE, f), "w").write(text)
    mod = os.path.join(TREE, "src/sync/mod.rs")
    with open(mod, "a") as fh:
        fh.write("\n#[cfg(feature = \"std\")]\npub(crate) mod mutant;\n")
    open(os.path.join(TREE, "src/sync/mutant.rs"), "w").write(MUTANT_RS)
    with open(os.path.join(TREE, "src/lib.rs"), "a") as fh:
        fh.write("\n/// The sweep's switch, read before a test starts threads.\n"
                 "#[cfg(feature = \"std\")]\n#[doc(hidden)]\n"
                 "pub fn mutant_init() {\n    sync::mutant::init();\n}\n")
    litmus = os.path.join(TREE, "tests", "litmus.rs")
    if os.path.exists(litmus):
        text = open(litmus).read()
        text = re.sub(r"(#\[test\]\s*\nfn \w+\(\) \{\n)", r"\1    evtchn::mutant_init();\n", text)
        open(litmus, "w").write(text)
    # The tree keeps no workspace members the sweep does not build.
    cargo = os.path.join(TREE, "Cargo.toml")
    text = open(cargo).read()
    text = re.sub(r'(?m)^\[\[bench\]\]\nname = "\w+"\nharness = false\n', "", text)
    open(cargo, "w").write(text)


def loom_env(extra=None):
    env = dict(os.environ)
    env["RUSTFLAGS"] = "--cfg loom -C debug-assertions"
    env.setdefault("LOOM_MAX_PREEMPTIONS", "2")
    env.pop("EVTCHN_MUTANT", None)
    env.pop("EVTCHN_MUTANT_TRACE", None)
    if extra:
        env.update(extra)
    return env


def build_models():
    """Builds the loom models in the tree; returns {file stem: executable}."""
    cmd = ["cargo", "test", "-p", "loom-tests", "--release", "--no-run",
           "--message-format=json", "--target-dir", BUILD]
    out = subprocess.run(cmd, cwd=TREE, env=loom_env(), capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-8000:])
        sys.exit("error: the mutated tree does not build")
    exes = {}
    for line in out.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["profile"]["test"]:
            exes[msg["target"]["name"]] = msg["executable"]
    return exes


def positive_models(exes):
    """(binary, test) pairs of the models that must pass: not the twins."""
    models = []
    for stem, exe in sorted(exes.items()):
        src = open(os.path.join(ROOT, "loom-tests", "tests", stem + ".rs")).read()
        negative = set(re.findall(r"#\[should_panic[^\]]*\]\s*(?:#\[[^\]]*\]\s*)*fn\s+(\w+)", src))
        ignored = set(re.findall(r"#\[ignore[^\]]*\]\s*(?:#\[[^\]]*\]\s*)*fn\s+(\w+)", src))
        out = subprocess.run([exe, "--list"], capture_output=True, text=True, check=True)
        for line in out.stdout.splitlines():
            if line.endswith(": test"):
                name = line[: -len(": test")]
                if name.split("::")[-1] not in negative | ignored:
                    models.append((stem, name))
    return models


def run_model(exe, name, extra, timeout):
    t = time.time()
    try:
        out = subprocess.run([exe, "--exact", name, "--test-threads", "1"],
                             env=loom_env(extra), capture_output=True, text=True, timeout=timeout)
        rc = out.returncode
        tail = (out.stdout + out.stderr)[-600:]
    except subprocess.TimeoutExpired:
        rc, tail = "timeout", ""
    return rc, time.time() - t, tail


def load_results(path):
    if os.path.exists(path):
        return json.load(open(path))
    return {"mutants": {}, "coverage": {}, "model_time": {}}


def save_results(path, res):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(res, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def cmd_list(args):
    sites, unknown = find_sites()
    muts = mutants_of(sites)
    for m in muts:
        print(f"{m['key']:>10}  {m['file']}:{m['line']}  {m['kind']:8} {m['from']:>7} -> {m['to']:7}  {m['text']}")
    print(f"{len(sites)} sites, {len(muts)} mutants", file=sys.stderr)
    for u in unknown:
        print(f"not an atomic ordering argument, left alone: {u}", file=sys.stderr)


def cmd_run(args):
    sites, _ = find_sites()
    muts = mutants_of(sites)
    current = {m["key"] for m in muts}
    if args.filter:
        muts = [m for m in muts if re.search(args.filter, f"{m['file']}:{m['line']} {m['key']}")]
    res = {"mutants": {}, "coverage": {}, "model_time": {}} if args.fresh else load_results(args.out)
    res["sites"] = len(sites)
    write_tree(sites)
    print("building the models in", TREE, flush=True)
    exes = build_models()
    models = positive_models(exes)
    print(f"{len(models)} positive models", flush=True)
    missing = [m for m in models if f"{m[0]}::{m[1]}" not in res["coverage"]]
    if missing:
        trace_dir = os.path.join(ROOT, "target", "mutation", "trace")
        os.makedirs(trace_dir, exist_ok=True)

        def cover(model):
            stem, name = model
            path = os.path.join(trace_dir, f"{stem}.{name.replace(':', '_')}")
            if os.path.exists(path):
                os.remove(path)
            rc, dt, tail = run_model(exes[stem], name, {"EVTCHN_MUTANT_TRACE": path}, 3600)
            ids = sorted({int(x) for x in open(path).read().split()}) if os.path.exists(path) else []
            return model, rc, dt, ids, tail

        with cf.ThreadPoolExecutor(args.jobs) as pool:
            for (stem, name), rc, dt, ids, tail in pool.map(cover, missing):
                if rc != 0:
                    sys.exit(f"error: {stem}::{name} fails unmutated (rc {rc}):\n{tail}")
                res["coverage"][f"{stem}::{name}"] = ids
                res["model_time"][f"{stem}::{name}"] = round(dt, 2)
                print(f"covered {stem}::{name}: {len(ids)} sites, {dt:.1f} s", flush=True)
        save_results(args.out, res)
    stale = sorted(set(res["mutants"]) - current)
    for k in stale:
        # Its ordering changed since: the mutant no longer exists.
        print(f"retired {k}: the ordering at its site changed", flush=True)
        res.setdefault("retired", {})[k] = res["mutants"].pop(k)
    todo = [m for m in muts if m["key"] not in res["mutants"]]
    if args.rerun:
        # Survivors against the models they have not run yet (models added
        # since): the earlier record is kept and extended.
        todo += [m for m in muts if m["key"] in res["mutants"]
                 and res["mutants"][m["key"]]["status"] in ("survived", "uncovered")]
    if args.skip_killed_in:
        # A rerun after sharper models: what an earlier run killed stays
        # killed (less synchronisation in the models only adds executions).
        earlier = load_results(args.skip_killed_in)["mutants"]
        for m in todo:
            e = earlier.get(m["key"])
            if e and e["status"] == "killed":
                res["mutants"][m["key"]] = dict(e, note=f"killed in {os.path.basename(args.skip_killed_in)}")
        todo = [m for m in todo if m["key"] not in res["mutants"]]
    print(f"{len(todo)} mutants to run", flush=True)

    def one(m):
        if args.skip_killed_in:
            # The earlier run may still be going: read it as it is now.
            e = load_results(args.skip_killed_in)["mutants"].get(m["key"])
            if e and e["status"] == "killed":
                return dict(e, note=f"killed in {os.path.basename(args.skip_killed_in)}")
        covering = sorted((k for k, ids in res["coverage"].items() if m["site"] in ids),
                          key=lambda k: res["model_time"][k])
        rec = dict(m, status="uncovered", by=None, ran=[], secs=0.0)
        earlier = res["mutants"].get(m["key"])
        if args.rerun and earlier:
            rec = dict(earlier)
            covering = [k for k in covering if k not in rec.get("ran", [])]
            if not covering:
                return rec
        if not covering:
            return rec
        # The slowest models only for a site no faster model covers.
        fast = [k for k in covering if res["model_time"][k] <= args.max_model_secs]
        if fast or args.rerun:
            rec["skipped"] = [k for k in covering if k not in fast]
            covering = fast
        if rec["status"] == "uncovered":
            rec["status"] = "survived"
        for k in covering:
            stem, name = k.split("::", 1)
            timeout = 4 * res["model_time"][k] + 20
            rc, dt, tail = run_model(exes[stem], name, {"EVTCHN_MUTANT": m["key"]}, timeout)
            rec["ran"].append(k)
            rec["secs"] = round(rec["secs"] + dt, 1)
            if rc == "timeout":
                rec.update(status="timeout", by=k)
                break
            if rc != 0:
                rec.update(status="killed", by=k, failure=tail.strip().splitlines()[-3:] if tail.strip() else [])
                break
        return rec

    done = 0
    with cf.ThreadPoolExecutor(args.jobs) as pool:
        for rec in pool.map(one, todo):
            res["mutants"][rec["key"]] = rec
            done += 1
            print(f"[{done}/{len(todo)}] {rec['key']:>9} {rec['file']}:{rec['line']} "
                  f"{rec['from']}->{rec['to']}: {rec['status']} {rec['by'] or ''} ({rec['secs']} s)", flush=True)
            save_results(args.out, res)


def cmd_miri(args):
    """Survivors against the litmus tests under Miri's weak-memory emulation."""
    res = load_results(args.out)
    sites, _ = find_sites()
    write_tree(sites, extra=["tests/litmus.rs"])
    env = dict(os.environ)
    env.pop("EVTCHN_MUTANT", None)
    env.pop("RUSTFLAGS", None)
    trace = os.path.join(ROOT, "target", "mutation", "litmus.trace")
    # Which litmus test runs which site (natively, one pass).
    listing = subprocess.run(["cargo", "test", "-p", "evtchn", "--release", "--test", "litmus",
                              "--target-dir", os.path.join(ROOT, "target", "mutation", "native"),
                              "--", "--list"], cwd=TREE, env=env, capture_output=True, text=True)
    names = [l[: -len(": test")] for l in listing.stdout.splitlines() if l.endswith(": test")]
    # The tests race by design, so one run may miss a site another run
    # takes: the coverage is the union of three runs.
    cover = {}
    for name in names:
        cover[name] = set()
        for _ in range(3):
            if os.path.exists(trace):
                os.remove(trace)
            subprocess.run(["cargo", "test", "-p", "evtchn", "--release", "--test", "litmus",
                            "--target-dir", os.path.join(ROOT, "target", "mutation", "native"),
                            "--", "--exact", name], cwd=TREE, env=dict(env, EVTCHN_MUTANT_TRACE=trace),
                           capture_output=True, text=True, check=True)
            if os.path.exists(trace):
                cover[name] |= {int(x) for x in open(trace).read().split()}
    res["litmus_coverage"] = {k: sorted(v) for k, v in cover.items()}
    todo = [m for m in res["mutants"].values() if m["status"] in ("survived", "uncovered")
            and m["kind"] != "fence" and (args.again or not m.get("miri"))]
    if args.filter:
        todo = [m for m in todo if re.search(args.filter, f"{m['file']}:{m['line']} {m['key']}")]
    print(f"{len(todo)} survivors to try under Miri", flush=True)
    menv = dict(env, MIRIFLAGS=f"-Zmiri-many-seeds=0..{args.seeds} -Zmiri-env-forward=EVTCHN_MUTANT")

    def miri(name, key):
        try:
            out = subprocess.run(["cargo", "+nightly", "miri", "test", "-p", "evtchn", "--test", "litmus",
                                  "--target-dir", MIRI_BUILD, "--", "--exact", name],
                                 cwd=TREE, env=dict(menv, EVTCHN_MUTANT=key),
                                 capture_output=True, text=True, timeout=1800)
            return out.returncode
        except subprocess.TimeoutExpired:
            return "timeout"

    # The control: every test must pass with the switch set to a site that
    # does not exist (the same schedules, no ordering changed). A test that
    # fails there would "kill" every mutant; it is left out, and said so.
    used = set(n for m in todo for n, ids in cover.items() if m["site"] in ids)
    res["litmus_unusable"] = {}
    for name, why in UNUSABLE_LITMUS.items():
        if cover.pop(name, None) is not None:
            res["litmus_unusable"][name] = why
            used.discard(name)
    for name in sorted(used):
        rc = miri(name, "4095:none")
        print(f"  control {name}: rc {rc}", flush=True)
        if rc != 0:
            res["litmus_unusable"][name] = f"fails with no mutant (rc {rc}, {args.seeds} seeds)"
            cover.pop(name, None)
    for m in todo:
        tests = [n for n, ids in cover.items() if m["site"] in ids]
        m["miri"] = {"ran": tests, "killed_by": None}
        for name in tests:
            t = time.time()
            rc = miri(name, m["key"])
            print(f"  {m['key']} {name}: rc {rc} ({time.time() - t:.0f} s)", flush=True)
            if rc != 0 and rc != "timeout":
                m["miri"]["killed_by"] = name
                m["status"] = "killed"
                m["by"] = f"miri {name}"
                break
        save_results(args.out, res)


def load_verdicts():
    if not os.path.exists(VERDICTS):
        return []
    return tomllib.load(open(VERDICTS, "rb")).get("mutant", [])


def verdict_for(m, verdicts):
    for v in verdicts:
        if "keys" in v and m["key"] in v["keys"]:
            return v
        if "sites" in v and m["site"] in v["sites"]:
            return v
        if "match" in v and re.search(v["match"], f"{m['file']}:{m['line']} {m['from']}->{m['to']} {m['text']}"):
            return v
    return None


def cmd_rekey(args):
    """After orderings were added or removed: site ids are positions in the
    tree, so the ids after the change shift. Each recorded mutant is matched
    to today's site by file, source line and ordering (the n-th of equal
    lines to the n-th), its key and site renamed, and the `sites` and
    `keys` of verdicts.toml renamed with it. The coverage is dropped (it
    names sites by id): the next `run` traces every model again and runs
    the mutants of the new sites."""
    sites, _ = find_sites()
    res = load_results(args.out)
    groups = {}
    for s in sites:
        groups.setdefault((s["file"], s["text"], s["kind"], s["from"]), []).append(s)
    old_sites = {}
    for m in res["mutants"].values():
        old_sites.setdefault(m["site"], m)
    by_group = {}
    for sid, m in sorted(old_sites.items(), key=lambda kv: (kv[1]["file"], kv[1]["line"])):
        by_group.setdefault((m["file"], m["text"], m["kind"], m["from"]), []).append(sid)
    site_map = {}
    for g, olds in by_group.items():
        news = groups.get(g, [])
        # Equal lines pair up in order only when their number is unchanged;
        # otherwise which old one a new one is cannot be told, and all of
        # them are run again.
        if len(news) == len(olds):
            for old, new in zip(olds, news):
                site_map[old] = new
    mutants, dropped = {}, []
    for k, m in res["mutants"].items():
        s = site_map.get(m["site"])
        if s is None:
            dropped.append(k)
            continue
        nk = f"{s['id']}:{m['to']}"
        m.update(key=nk, site=s["id"], line=s["line"])
        mutants[nk] = m
    res["mutants"] = mutants
    res["coverage"], res["model_time"] = {}, {}
    save_results(args.out, res)
    moved = {o: s["id"] for o, s in site_map.items() if o != s["id"]}
    print(f"{len(moved)} sites renumbered, {len(dropped)} mutants without a site now: {dropped}")
    ids = {o: s["id"] for o, s in site_map.items()}
    gone = set()

    def renumber(match):
        # A verdict's site or key whose site is gone (its line changed) is
        # dropped from the list: its new site's mutants are run again.
        body = match.group(2)
        if match.group(1) == "sites":
            olds = [int(x) for x in re.findall(r"\d+", body)]
            gone.update(o for o in olds if o not in ids)
            items = [str(ids[o]) for o in olds if o in ids]
            return f"sites = [{', '.join(items)}]"
        pairs = re.findall(r'"(\d+):(\w+)"', body)
        gone.update(f"{o}:{to}" for o, to in pairs if int(o) not in ids)
        items = [f'"{ids[int(o)]}:{to}"' for o, to in pairs if int(o) in ids]
        return f"keys = [{', '.join(items)}]"

    text = open(VERDICTS).read()
    text = re.sub(r"^(sites|keys) = \[([^\]]*)\]", renumber, text, flags=re.M)
    open(VERDICTS, "w").write(text)
    if gone:
        print(f"dropped from verdicts.toml (their sites changed): {sorted(map(str, gone))}")


def current_lines(res):
    """Results with each site's line as it is in the tree now (site ids are
    stable while no ordering is added or removed; the text must agree)."""
    sites, _ = find_sites()
    now = {s["id"]: s for s in sites}
    for m in res["mutants"].values():
        s = now.get(m["site"])
        if s and s["text"] == m["text"] and s["file"] == m["file"]:
            m["line"] = s["line"]
    return res


def classify_all(res, verdicts):
    rows = []
    for m in sorted(res["mutants"].values(), key=lambda m: (m["file"], m["line"], m["key"])):
        v = verdict_for(m, verdicts)
        cls = m["status"]
        if v is not None and v.get("even_if_killed") and cls in ("killed", "timeout"):
            cls = v["verdict"]
        elif cls != "killed" and v is not None:
            cls = v["verdict"]  # "equivalent", "killed-elsewhere" or "survived" (with a plan)
        rows.append((m, cls, v))
    return rows


def table(rows):
    files = {}
    for m, cls, v in rows:
        c = files.setdefault(m["file"], {"generated": 0, "killed": 0, "equivalent": 0, "surviving": 0,
                                         "argued": 0})
        c["generated"] += 1
        if cls in ("killed", "killed-elsewhere", "timeout"):
            c["killed"] += 1
        elif cls == "equivalent":
            c["equivalent"] += 1
        else:
            c["surviving"] += 1
            if v is not None:
                c["argued"] += 1
    return files


PREAMBLE = """
# Results of the ordering sweep

Made by `python3 mutation/sweep.py report --before mutation/ordering-results.json
--out mutation/ordering-results-after.json`; how the sweep works is in
[README.md](README.md). One mutant is one memory ordering in `src/` made one
step weaker, or one store-load fence removed.

* **before**: `ordering-results.json`, the loom models as they were
  (`python3 mutation/sweep.py run --jobs 2`: 65 mutants against every
  model that executes their site, 14 with `--max-model-secs 60` (which
  skips only the 99 s stale-claim model, where a faster one covers the
  site), the other 53 with `--max-model-secs 15`), no verdicts: every
  mutant not killed counts as surviving.
* **after**: `ordering-results-after.json`, the models with ghost-state
  checks (`run --max-model-secs 15 --skip-killed-in
  mutation/ordering-results.json`: what the first run killed stays killed),
  the survivors of the publication and hand-off paths run against
  `tests/litmus.rs` under Miri (`miri --seeds 16`), the registration
  mutants again after the registration litmus tests were added and made
  to hold their thread handles (`miri --again --seeds 8 --filter ' (6|8|10|12|13|14|59|60):Relaxed$'`,
  with `fifo_control_after_page_vs_raise` left out: `litmus_unusable`),
  every survivor against the models added since and the models an earlier
  run skipped as slow (`run --rerun --max-model-secs 15`, which also runs
  the 15 s-and-faster models a mutant had not run), and the verdicts of `verdicts.toml` (equivalent, or surviving with an
  argument or a plan).

"killed of non-equivalent" is killed / (generated − equivalent). A model
run that times out (four times its own time plus 20 s) counts as a kill.
"argued": surviving mutants whose ordering no tool here can judge, with the
litmus argument of why it is needed (`verdicts.toml`); the rest of the
surviving have no verdict yet.
"""


PLAN = """
## What is not killed

Every mutant not killed has a verdict. The equivalent ones carry the
happens-before argument of why no execution differs; 20 of them are the
hand-off and control-plane groups argued in this form for the first time
after the models S20–S24 (a weakening there is redundant with another
edge that is always present). A reader who finds a hole in one of those
arguments has found a model to write.

The surviving ones are orderings that no tool here can judge, each with
its litmus argument:

* **the store-buffer pattern with one `SeqCst` access weakened** (20):
  the loom build's `store_load_fence` (a `SeqCst` fence) forbids the
  outcome whatever the accesses' orders, and Miri's `SeqCst` is
  conservative;
* **a raiser's flag swap that must come after a scan's clear** (FIFO
  `link`'s `ready` `fetch_or` without `Acquire`, 20:Release): loom places
  a read-modify-write last in its location's modification order;
* **the close's pending clear** (37, 69) and **the replay request's
  release** (96:Acquire): loom's `SeqCst` accesses meet in one clock and
  order the sender's writes by themselves, which C++20 does not.

Plan: a checker with C++20's `SeqCst` and free read-modify-write placement
(GenMC), or Arm litmus runs of these patterns; until then the arguments
stand, next to the code and here.

What the work found on the way: loom explores the modification order of
plain stores (a relaxed store may land after a later one it is not ordered
with), and S20 and S21 used it to find the give-back's and the
registration's selector `fetch_or` too weak: a scan's earlier flag clear
could land after their flag set, and the vCPU halt with work given back.
Both are `AcqRel` now.

### Registration under Miri

Before S22, the registration mutants had only the litmus tests under
Miri, which kill the page load (12) and not the others. Two pitfalls made
Miri blind there (a scoped thread's handle dropped early, Miri's address
reuse; README.md, "The second checker: Miri"); loom's causality check on
atomics created in another thread (S22) kills them all.
"""


def cargo_mutants_runs(folder):
    """The runs under `folder` (one sub-folder each, in name order, with
    cargo-mutants' caught/missed/timeout/unviable.txt and the `command`
    that made them); a mutant's outcome is the one of the last run that
    tested it (a re-run after new tests overrides a miss)."""
    runs, outcome = [], {}
    for name in sorted(os.listdir(folder)):
        run = os.path.join(folder, name)
        if not os.path.isdir(run):
            continue
        cmd_path = os.path.join(run, "command")
        cmd = open(cmd_path).read().strip() if os.path.exists(cmd_path) else "?"
        counts = {"caught": 0, "timeout": 0, "unviable": 0, "missed": 0}
        for kind in counts:
            path = os.path.join(run, kind + ".txt")
            if not os.path.exists(path):
                continue
            for line in open(path).read().splitlines():
                if line.strip():
                    outcome[line.strip()] = kind
                    counts[kind] += 1
        runs.append((name, cmd, counts))
    return runs, outcome


def cargo_mutants_verdict(name, verdicts):
    for v in verdicts:
        if name in v.get("names", []) or ("match" in v and re.search(v["match"], name)):
            return v
    return None


CM_CLASSES = ("caught", "timeout", "unviable", "equivalent", "killed-elsewhere", "surviving")


def cargo_mutants_section(folder):
    """The cargo-mutants part of the report: per file, what the runs
    generated and killed, and every missed mutant with its verdict
    (`verdicts.toml` in the same folder)."""
    runs, outcome = cargo_mutants_runs(folder)
    vpath = os.path.join(folder, "verdicts.toml")
    verdicts = tomllib.load(open(vpath, "rb")).get("mutant", []) if os.path.exists(vpath) else []
    out = ["## cargo-mutants", "",
           "cargo-mutants' own mutants (operators, return values, deleted calls) against the "
           "native suite; `.cargo/mutants.toml` and mutation/README.md say how. The runs, in "
           "order (a later run's outcome for a mutant replaces an earlier one):", ""]
    for name, cmd, c in runs:
        out.append(f"* `cargo-mutants/{name}`: `{cmd}` (caught {c['caught']}, timeout {c['timeout']}, "
                   f"unviable {c['unviable']}, missed {c['missed']})")
    out += ["", "\"killed of non-equivalent\" is (caught + timeout + killed elsewhere) / "
            "(tested − unviable − equivalent). A timeout counts as caught (the mutant hangs the "
            "suite). \"Killed elsewhere\": missed by the native run, failed by a check outside "
            "it (the verdict names it and its command: Miri's leak check, a loom model).", "",
            "| file | tested | caught | timeout | unviable | missed: equivalent | missed: killed elsewhere | "
            "missed: surviving | killed of non-equivalent |", "|---|---|---|---|---|---|---|---|---|"]
    files = {}
    missed = []
    for name, kind in outcome.items():
        f = name.split(":")[0]
        c = files.setdefault(f, dict.fromkeys(CM_CLASSES, 0))
        if kind == "missed":
            v = cargo_mutants_verdict(name, verdicts)
            cls = v["verdict"] if v and v["verdict"] in ("equivalent", "unviable", "killed-elsewhere") \
                else "surviving"
            c[cls] += 1
            missed.append((name, cls, v))
        else:
            c[kind] += 1
    tot = dict.fromkeys(CM_CLASSES, 0)
    def row(label, c):
        tested = sum(c.values())
        denom = tested - c["unviable"] - c["equivalent"]
        killed = c["caught"] + c["timeout"] + c["killed-elsewhere"]
        pct = f"{100 * killed / denom:.0f}%" if denom else "n/a"
        return (f"| {label} | {tested} | {c['caught']} | {c['timeout']} | {c['unviable']} | "
                f"{c['equivalent']} | {c['killed-elsewhere']} | {c['surviving']} | {pct} |")
    for f, c in sorted(files.items()):
        out.append(row(f, c))
        for k in tot:
            tot[k] += c[k]
    out.append(row("**all**", tot))
    out += ["", "Missed, grouped by verdict (one argument per group):", ""]
    groups = {}
    for name, cls, v in sorted(missed):
        groups.setdefault(id(v) if v else name, (cls, v, []))[2].append(name)
    for cls, v, names in sorted(groups.values(), key=lambda g: g[2][0]):
        why = v["argument"].strip().replace("\n", " ") if v else "no verdict yet"
        out.append("* " + ", ".join(f"`{n}`" for n in names) + f": **{cls}**. {why}")
    return "\n".join(out)


def anchor(title):
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")


def current_only(res):
    """Results of the mutants the tree has now: an ordering changed since
    (strengthened after a model found it too weak) retires its old
    mutants and brings new ones."""
    sites, _ = find_sites()
    now = {m["key"] for m in mutants_of(sites)}
    res["mutants"] = {k: m for k, m in res["mutants"].items() if k in now}
    return res


def cmd_report(args):
    res = current_only(current_lines(load_results(args.out)))
    verdicts = load_verdicts()
    rows = classify_all(res, verdicts)
    after = table(rows)
    before = table(classify_all(current_lines(load_results(args.before)), [])) if args.before else None
    if args.before:
        print(PREAMBLE.strip())
        print()
    print("| file | generated | killed | equivalent | surviving (of which argued) | killed of non-equivalent |"
          + (" before: killed / surviving |" if before else ""))
    print("|---|---|---|---|---|---|" + ("---|" if before else ""))
    tot = {"generated": 0, "killed": 0, "equivalent": 0, "surviving": 0, "argued": 0}
    for f in sorted(after):
        c = after[f]
        for k in tot:
            tot[k] += c[k]
        ne = c["generated"] - c["equivalent"]
        pct = f"{100 * c['killed'] / ne:.0f}%" if ne else "n/a"
        b = ""
        if before:
            bc = before.get(f, {"killed": 0, "surviving": 0})
            b = f" {bc['killed']} / {bc['surviving']} |"
        print(f"| {f} | {c['generated']} | {c['killed']} | {c['equivalent']} | {c['surviving']} ({c['argued']}) | {pct} |{b}")
    ne = tot["generated"] - tot["equivalent"]
    b = ""
    if before:
        b = f" {sum(c['killed'] for c in before.values())} / {sum(c['surviving'] for c in before.values())} |"
    print(f"| **all** | {tot['generated']} | {tot['killed']} | {tot['equivalent']} | {tot['surviving']} ({tot['argued']}) | "
          f"{100 * tot['killed'] / ne:.0f}% |{b}" if ne else "")
    print()
    print("| mutant | site | change | result | by / argument |")
    print("|---|---|---|---|---|")
    for m, cls, v in rows:
        why = m["by"] or ""
        if cls != "killed" and v is not None:
            why = f"[{v['title']}](#{anchor(v['title'])})"
            if m["by"]:
                why += f" (a loom model fails without it: {m['by']})"
        elif cls != "killed":
            why = "no verdict yet: [what is not killed](#what-is-not-killed)"
        if cls != "killed" and m.get("miri", {}).get("ran"):
            why += f" (Miri: {len(m['miri']['ran'])} litmus tests, not killed)"
        text = m["text"][:60].replace("|", "\\|")
        print(f"| {m['key']} | {m['file']}:{m['line']} `{text}` | {m['kind']} {m['from']} → {m['to']} "
              f"| {cls} | {why} |")
    print()
    print("## Verdicts")
    for v in verdicts:
        keys = [m["key"] for m, cls, vv in rows if vv is v and cls != "killed"]
        if not keys:
            continue
        print()
        print(f"### {v['title']}")
        print()
        print(f"{v['verdict']}: {', '.join(keys)}")
        print()
        print(v["argument"].strip())
        if v.get("plan"):
            print()
            print(f"Plan: {v['plan']}")
    if args.before:
        print()
        print(PLAN.strip())
    if args.cargo_mutants:
        print()
        print(cargo_mutants_section(args.cargo_mutants))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    r = sub.add_parser("run")
    r.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    r.add_argument("--filter")
    r.add_argument("--out", default=RESULTS)
    r.add_argument("--fresh", action="store_true")
    r.add_argument("--rerun", action="store_true",
                   help="also run surviving mutants against the covering models they have not run (models added since)")
    r.add_argument("--skip-killed-in", help="results file whose killed mutants are not run again")
    r.add_argument("--max-model-secs", type=float, default=60.0,
                   help="skip covering models slower than this (unmutated) when a faster one covers the site")
    mi = sub.add_parser("miri")
    mi.add_argument("--filter")
    mi.add_argument("--seeds", type=int, default=64)
    mi.add_argument("--again", action="store_true",
                    help="also the mutants an earlier Miri pass ran (after the litmus tests changed)")
    mi.add_argument("--out", default=RESULTS)
    rk = sub.add_parser("rekey", help="after orderings were added or removed: rename the recorded mutants' sites")
    rk.add_argument("--out", default=RESULTS)
    rep = sub.add_parser("report")
    rep.add_argument("--out", default=RESULTS)
    rep.add_argument("--before")
    rep.add_argument("--cargo-mutants", help="the folder of cargo-mutants runs (one sub-folder each) and their verdicts.toml")
    args = p.parse_args()
    {"list": cmd_list, "run": cmd_run, "miri": cmd_miri, "rekey": cmd_rekey, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
