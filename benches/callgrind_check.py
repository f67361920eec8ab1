#!/usr/bin/env python3
"""Fails when an instruction count of the callgrind examples exceeds its limit.

Builds `examples/callgrind_send.rs` and `examples/callgrind_drain.rs` with the
toolchain pinned in `benches/callgrind-limits.toml` (`cargo +<toolchain>`,
release, in a target directory of its own), runs every mode that
`benches/report.py` runs under `valgrind --tool=callgrind` (report.py's own
`callgrind` function, same N), and computes each row of report.py's
instruction table the same way: instructions per send or drain, net of the
re-arming stores measured alone. Each row's evtchn figure is compared with
its limit in the limits file; the floors are measured and shown beside it
for context, not limited.

Prints a table of measured against limit for every row, then the raw counts
per mode. Exits 1 when a row is over its limit (naming every such row), when
a mode could not be measured, when a row has no limit or a limit names no
row, or when the examples do not build.

`--update` rewrites the limits file from the measured figures instead: each
limit is the measured figure plus headroom (`headroom_factor` and
`headroom_min` in the file: the larger of measured x factor and measured +
min, rounded up to a whole instruction), so a deliberate change of the
counts is one command. `--update --toolchain V` also moves the pin to V.

Usage (from anywhere in the repository):

    python3 benches/callgrind_check.py [--limits FILE] [--target DIR]
    python3 benches/callgrind_check.py --update [--toolchain V]

Needs valgrind and the pinned toolchain (`.ci/callgrind` installs both).
Python 3.11, standard library only.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

BENCHES = Path(__file__).resolve().parent
ROOT = BENCHES.parent
sys.path.insert(0, str(BENCHES))
import report  # noqa: E402  (benches/report.py: the callgrind runner and its N)

LIMITS = BENCHES / "callgrind-limits.toml"
EXAMPLES = ("callgrind_send", "callgrind_drain")


@dataclass(frozen=True)
class Row:
    """One row of report.py's instruction table. `key` names its limit (two
    rows share one: the FIFO fresh send against two floors). `rearm` is the
    mode subtracted from both figures (None: nothing), `per` the ports a
    drain handles (the figure is per port)."""

    key: str
    what: str
    example: str
    evtchn: str
    floor: str
    rearm: str | None
    per: int
    base: str


# report.py's callgrind_table, row for row.
ROWS = [
    Row("send_fresh", "send, fresh raise (per send)",
        "callgrind_send", "fresh_evtchn", "fresh_floor", "rearm", 1, "floor"),
    Row("set_pending_fresh", "`set_pending` alone, fresh",
        "callgrind_send", "fresh_raw", "fresh_floor", "rearm", 1, "floor"),
    Row("send_coalesced", "send, coalesced (per send)",
        "callgrind_send", "coalesced_evtchn", "coalesced_floor", None, 1, "floor"),
    Row("send_fresh_fifo", "send, fresh raise (FIFO)",
        "callgrind_send", "fresh_fifo_evtchn", "fresh_fifo_floor", "rearm_fifo", 1,
        "floor fifo"),
    Row("send_fresh_fifo", "send, fresh raise (FIFO), vs the floor with a queue lock",
        "callgrind_send", "fresh_fifo_evtchn", "fresh_fifo_floor_locked", "rearm_fifo", 1,
        "floor fifo + queue lock"),
    Row("set_pending_fresh_fifo", "`set_pending` alone, fresh (FIFO)",
        "callgrind_send", "fresh_fifo_raw", "fresh_fifo_floor", "rearm_fifo", 1,
        "floor fifo"),
    Row("send_coalesced_fifo", "send, coalesced (FIFO)",
        "callgrind_send", "coalesced_fifo_evtchn", "coalesced_fifo_floor", None, 1,
        "floor fifo"),
    Row("host_send_fresh", "hypervisor send (`Host::send`), fresh raise",
        "callgrind_send", "fresh_host", "fresh_floor", "rearm", 1, "floor"),
    Row("host_send_coalesced", "hypervisor send, coalesced",
        "callgrind_send", "coalesced_host", "coalesced_floor", None, 1, "floor"),
    Row("host_send_fresh_fifo",
        "hypervisor send, fresh raise (FIFO), vs the floor with a queue lock",
        "callgrind_send", "fresh_fifo_host", "fresh_fifo_floor_locked", "rearm_fifo", 1,
        "floor fifo + queue lock"),
    Row("host_send_coalesced_fifo", "hypervisor send, coalesced (FIFO)",
        "callgrind_send", "coalesced_fifo_host", "coalesced_fifo_floor", None, 1,
        "floor fifo"),
    Row("drain_one", "drain, 1 pending of 4096 (per drain)",
        "callgrind_drain", "one_evtchn", "one_hand", "rearm_one", 1, "hand scan"),
    Row("drain_all", "drain, all 4095 pending (per port)",
        "callgrind_drain", "all_evtchn", "all_hand", "rearm_all", report.PORTS_ALL,
        "hand scan"),
    Row("drain_one", "drain, 1 pending of 4096, vs the flow-lock scan",
        "callgrind_drain", "one_evtchn", "one_flow", "rearm_one", 1, "hand scan + flow lock"),
    Row("drain_all", "drain, all 4095 pending, vs the flow-lock scan (per port)",
        "callgrind_drain", "all_evtchn", "all_flow", "rearm_all", report.PORTS_ALL,
        "hand scan + flow lock"),
    Row("drain_one_fifo", "drain, 1 pending of 4096 (FIFO, per drain)",
        "callgrind_drain", "one_fifo", "one_walk", "rearm_fifo_one", 1, "hand walk"),
    Row("drain_all_fifo", "drain, all 4095 pending (FIFO, per port)",
        "callgrind_drain", "all_fifo", "all_walk", "rearm_fifo_all", report.PORTS_ALL,
        "hand walk"),
]

LOOP_FN = {"callgrind_send": "send_loop_", "callgrind_drain": "drain_loop_"}
ITERS = {"callgrind_send": report.SEND_N, "callgrind_drain": report.DRAIN_N}


def modes() -> list[tuple[str, str]]:
    """(example, mode) for every mode the rows use, each once, in row order."""
    seen: list[tuple[str, str]] = []
    for r in ROWS:
        for m in (r.evtchn, r.floor, r.rearm):
            if m is not None and (r.example, m) not in seen:
                seen.append((r.example, m))
    return seen


def example_modes(example: str) -> set[str]:
    """The modes an example accepts: the string arms of its `match mode`."""
    src = (ROOT / "examples" / f"{example}.rs").read_text()
    return set(re.findall(r'^\s*"([a-z0-9_]+)" =>', src, re.M))


def drift() -> list[str]:
    """Modes report.py's callgrind table runs that this check does not (a row
    added there and not here), and modes here that no example accepts."""
    known = example_modes("callgrind_send") | example_modes("callgrind_drain")
    used_by_report = set(re.findall(r'"([a-z0-9_]+)"', inspect.getsource(report.callgrind_table)))
    ours = {m for _, m in modes()}
    errors = []
    missing = sorted((used_by_report & known) - ours)
    if missing:
        errors.append("report.py's instruction table runs modes this check does not: "
                      f"{', '.join(missing)} (add its rows to ROWS in {Path(__file__).name})")
    unknown = sorted(ours - known)
    if unknown:
        errors.append(f"modes no example accepts: {', '.join(unknown)}")
    return errors


# --- limits file -------------------------------------------------------------


@dataclass
class Limits:
    toolchain: str
    factor: float
    minimum: float
    limits: dict[str, int]


def load_limits(path: Path) -> Limits:
    with path.open("rb") as f:
        d = tomllib.load(f)
    try:
        return Limits(
            toolchain=str(d["toolchain"]),
            factor=float(d["headroom_factor"]),
            minimum=float(d["headroom_min"]),
            limits={str(k): int(v) for k, v in d["limits"].items()},
        )
    except (KeyError, TypeError, ValueError) as e:
        sys.exit(f"{path}: malformed limits file ({e!r}): expected toolchain, "
                 "headroom_factor, headroom_min and a [limits] table of integers")


def headroom(measured: float, factor: float, minimum: float) -> int:
    return math.ceil(max(measured * factor, measured + minimum))


def write_limits(path: Path, lim: Limits, figures: dict[str, float], whats: dict[str, str]) -> None:
    lines = [
        "# Instruction-count limits for benches/callgrind_check.py (.ci/callgrind):",
        "# instructions per send or drain (per port for the `all` drains), net of the",
        "# re-arming stores, as in benches/report.py's instruction table. The check",
        "# fails when a measured figure exceeds its limit.",
        "#",
        "# Written by `python3 benches/callgrind_check.py --update`: each limit is the",
        "# larger of measured x headroom_factor and measured + headroom_min, rounded up.",
        "# Counts depend on the compiler: the check builds with `cargo +<toolchain>`.",
        "# Rerun --update after a deliberate change (and to lower the limits after",
        "# the code gets faster); `--update --toolchain V` moves the pin.",
        "",
        f'toolchain = "{lim.toolchain}"',
        f"headroom_factor = {lim.factor}",
        f"headroom_min = {lim.minimum:g}",
        "",
        "[limits]",
        "# key = limit  # measured when written: row",
    ]
    width = max(len(k) for k in figures)
    for k, v in figures.items():
        lines.append(f"{k:<{width}} = {lim.limits[k]:<5} # {v:.2f}: {whats[k]}")
    path.write_text("\n".join(lines) + "\n")


# --- build and measure -------------------------------------------------------


def build(toolchain: str, target: Path) -> bool:
    env = dict(os.environ, CARGO_TARGET_DIR=str(target))
    # The limits hold for the plain release profile: flags from the
    # environment would change the code measured.
    for var in ("RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS"):
        if env.pop(var, None):
            print(f"note: {var} is ignored for this build", file=sys.stderr)
    env.pop("RUSTUP_TOOLCHAIN", None)
    version = subprocess.run(["rustc", f"+{toolchain}", "-V"], capture_output=True,
                             text=True, env=env)
    if version.returncode != 0:
        print(f"toolchain {toolchain} not usable: {version.stderr.strip()}\n"
              f"install it: rustup toolchain install {toolchain} --profile minimal",
              file=sys.stderr)
        return False
    print(f"toolchain: {version.stdout.strip()}; target directory: {target}")
    cmd = ["cargo", f"+{toolchain}", "build", "--release"]
    for ex in EXAMPLES:
        cmd += ["--example", ex]
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode == 0


def measure(target: Path) -> tuple[dict[str, int], list[str]]:
    """Raw instruction counts per mode, and the modes not measured."""
    counts: dict[str, int] = {}
    failed = []
    todo = modes()
    for i, (example, mode) in enumerate(todo, 1):
        n = ITERS[example]
        print(f"[{i}/{len(todo)}] {example} {mode} {n}", flush=True)
        c = report.callgrind(example, LOOP_FN[example], mode, n, target)
        # Every iteration executes at least one instruction inside the loop
        # function: fewer means the toggle matched nothing (a renamed or
        # inlined loop), which would otherwise pass any limit.
        if c is None or c < n:
            if c is not None:
                print(f"{example} {mode}: {c} instructions collected for {n} iterations: "
                      f"the {LOOP_FN[example]}* loop was not measured", file=sys.stderr)
            failed.append(f"{example} {mode}")
            continue
        counts[mode] = int(c)
    return counts, failed


def figures(counts: dict[str, int]) -> list[tuple[Row, float | None, float | None]]:
    """Per row, net evtchn and floor figures as report.py computes them
    (None, None: a mode of the row was not measured)."""
    out: list[tuple[Row, float | None, float | None]] = []
    for r in ROWS:
        n = ITERS[r.example]
        need = [r.evtchn, r.floor] + ([r.rearm] if r.rearm else [])
        if any(m not in counts for m in need):
            out.append((r, None, None))
            continue
        sub = counts[r.rearm] / n / r.per if r.rearm else 0.0
        e = counts[r.evtchn] / n / r.per - sub
        f = counts[r.floor] / n / r.per - sub
        out.append((r, e, f))
    return out


# --- main ---------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limits", type=Path, default=LIMITS,
                    help=f"the limits file (default: {LIMITS.relative_to(ROOT)})")
    ap.add_argument("--target", type=Path, default=None,
                    help="cargo's target directory for the pinned build (default: "
                         "$CARGO_TARGET_DIR/callgrind-<toolchain>, or "
                         "target/callgrind-<toolchain>)")
    ap.add_argument("--update", action="store_true",
                    help="rewrite the limits file from the measured figures")
    ap.add_argument("--toolchain", help="with --update: pin this toolchain instead")
    args = ap.parse_args()
    if args.toolchain and not args.update:
        ap.error("--toolchain goes with --update (the limits belong to the pinned toolchain)")

    errors = drift()
    if errors:
        print("\n".join(f"error: {e}" for e in errors), file=sys.stderr)
        return 1
    if shutil.which("valgrind") is None:
        print("error: valgrind not found (.ci/callgrind installs it)", file=sys.stderr)
        return 1

    lim = load_limits(args.limits)
    if args.toolchain:
        lim.toolchain = args.toolchain
    base = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    target = (args.target or base / f"callgrind-{lim.toolchain}").resolve()
    if not build(lim.toolchain, target):
        print("error: the callgrind examples were not built", file=sys.stderr)
        return 1

    counts, failed = measure(target)
    rows = figures(counts)
    keys = list(dict.fromkeys(r.key for r in ROWS))
    whats = {}
    for r in ROWS:
        whats.setdefault(r.key, r.what)

    if args.update:
        if failed:
            print("error: not measured: " + "; ".join(failed) + ": limits file unchanged",
                  file=sys.stderr)
            return 1
        new = {r.key: e for r, e, _ in rows}
        old = lim.limits
        lim.limits = {k: headroom(new[k], lim.factor, lim.minimum) for k in keys}
        write_limits(args.limits, lim, {k: new[k] for k in keys}, whats)
        print(f"\nwrote {args.limits} (toolchain {lim.toolchain}, headroom "
              f"max(x{lim.factor}, +{lim.minimum:g}), rounded up)\n")
        print("| key | measured | old limit | new limit |")
        print("|---|---|---|---|")
        for k in keys:
            print(f"| {k} | {new[k]:.2f} | {old.get(k, '-')} | {lim.limits[k]} |")
        return 0

    over: dict[str, str] = {}
    print(f"\nInstructions per send or drain (valgrind's Ir), net of the re-arming "
          f"stores; {report.SEND_N:,} sends, {report.DRAIN_N:,} drains per mode; "
          f"toolchain {lim.toolchain}; limits from {args.limits}.\n")
    print("| key | what | evtchn | limit | verdict | baseline | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r, e, f in rows:
        limit = lim.limits.get(r.key)
        if e is None:
            verdict = "**NOT MEASURED**"
            print(f"| {r.key} | {r.what} | - | {limit if limit is not None else '-'} "
                  f"| {verdict} | - ({r.base}) | - |")
            continue
        if limit is None:
            verdict = "**NO LIMIT**"
        elif e > limit:
            verdict = "**OVER**"
            over.setdefault(r.key, f"{r.key} ({r.what}): {e:.2f} > limit {limit}")
        else:
            verdict = "ok"
        ratio = f"{e / f:.2f}x" if f > 0 else "-"
        print(f"| {r.key} | {r.what} | {e:.2f} | {limit if limit is not None else '-'} "
              f"| {verdict} | {f:.2f} ({r.base}) | {ratio} |")

    print("\nRaw counts (instructions collected in the loop function, per mode):")
    for example, mode in modes():
        c = counts.get(mode)
        print(f"  {example:<16} {mode:<24} {c if c is not None else 'not measured'}")

    problems = []
    if over:
        problems.append(f"{len(over)} row(s) over the limit:")
        problems += [f"  {v}" for v in over.values()]
    if failed:
        problems.append("not measured: " + "; ".join(failed))
    no_limit = [k for k in keys if k not in lim.limits]
    if no_limit:
        problems.append(f"no limit in {args.limits} for: {', '.join(no_limit)}")
    stale = [k for k in lim.limits if k not in keys]
    if stale:
        problems.append(f"limits in {args.limits} for no row: {', '.join(stale)}")
    if problems:
        sys.stdout.flush()
        print("\nFAIL: " + "\n".join(problems), file=sys.stderr)
        if over or no_limit or stale:
            print("(after a deliberate change: python3 benches/callgrind_check.py --update)",
                  file=sys.stderr)
        return 1
    print(f"\nall {len(keys)} limits hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
