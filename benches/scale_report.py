#!/usr/bin/env python3
"""Tables and a plot of the scaling bench (`benches/scale.rs`).

Reads criterion's `target/criterion/**/new/{benchmark,estimates}.json` of
the `scale/...` groups and prints, per group, each size's time and its
ratio to the smallest size's time (goal: flat within 1.2x), with the path
of criterion's own line plot of the group. Writes a plot of its own
(`benches/scale.svg`: time against size on a log2 axis, one line per group
and function) unless `--no-plot`.

Usage (from the package root, after
`cargo bench --bench scale -- --warm-up-time 1 --measurement-time 1`):

    python3 benches/scale_report.py [--target DIR] [--plot PATH | --no-plot]

`benches/report.py` may include the tables: `scale_section(crit)` returns
them as markdown lines. Python 3.11, standard library only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent
PLOT = ROOT / "benches" / "scale.svg"
BENCH_CMD = "cargo bench --bench scale -- --warm-up-time 1 --measurement-time 1"
# The bound a size's time may reach, as a multiple of the smallest size's.
FLAT = 1.2
# The groups in the order of the bench; any other `scale/` group follows.
GROUPS = [
    "scale/send ports",
    "scale/send ports fifo",
    "scale/drain ports",
    "scale/drain ports fifo",
    "scale/send vcpus",
    "scale/drain vcpus",
]
# What a group's parameter counts.
UNIT = {"ports": "ports", "vcpus": "vCPUs"}


@dataclass
class Point:
    """One benchmark of a group: its function, its size and criterion's
    estimate (ns per iteration: the slope where criterion reports one, the
    mean otherwise, as `report.py`'s `load_estimates`)."""

    group: str
    function: str
    param: float
    value_str: str
    group_dir: str
    point: float
    lo: float
    hi: float
    mtime: float


def load_points(crit: Path) -> dict[str, list[Point]]:
    """The `scale/` benchmarks under `crit`, by group, each group's points
    sorted by function and then size."""
    out: dict[str, list[Point]] = {}
    for bench in crit.glob("**/new/benchmark.json"):
        est_path = bench.parent / "estimates.json"
        if not est_path.exists():
            continue
        b = json.loads(bench.read_text())
        group = b.get("group_id", "")
        if not group.startswith("scale/") or b.get("value_str") is None:
            continue
        try:
            param = float(b["value_str"])
        except ValueError:
            continue
        est = json.loads(est_path.read_text())
        e = est.get("slope") or est["mean"]
        ci = e["confidence_interval"]
        out.setdefault(group, []).append(Point(
            group, b.get("function_id") or "", param, b["value_str"],
            b["directory_name"].split("/")[0], e["point_estimate"],
            ci["lower_bound"], ci["upper_bound"], est_path.stat().st_mtime,
        ))
    for pts in out.values():
        pts.sort(key=lambda p: (p.function, p.param))
    return out


def ordered(groups: dict[str, list[Point]]) -> list[str]:
    known = [g for g in GROUPS if g in groups]
    return known + sorted(g for g in groups if g not in GROUPS)


def unit(group: str) -> str:
    for key, name in UNIT.items():
        if key in group.split("/")[-1].split():
            return name
    return "size"


def lines_of(pts: list[Point]) -> dict[str, list[Point]]:
    """A group's points by function (criterion's lines), sizes ascending."""
    out: dict[str, list[Point]] = {}
    for p in pts:
        out.setdefault(p.function, []).append(p)
    return out


def fmt_ns(ns: float) -> str:
    return f"{ns:.2f}"


def shown(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def scale_section(crit: Path) -> list[str]:
    """Markdown lines: per `scale/` group, a table of each size's time and
    its ratio to the smallest size's (the range in brackets is what the two
    95 % intervals allow), with the verdict against flat within 1.2x."""
    groups = load_points(crit)
    lines = ["### Scaling with ports and vCPUs", ""]
    if not groups:
        return lines + [f"not measured (run `{BENCH_CMD}`)", ""]
    lines += [
        f"Time of one send or drain at each size, and its ratio to the time at the smallest "
        f"size of the same row (goal: flat within {FLAT:g}×). Plot of all rows: "
        f"`{shown(PLOT)}` (`python3 benches/scale_report.py`).",
        "",
    ]
    for group in ordered(groups):
        pts = groups[group]
        by_fn = lines_of(pts)
        plot = crit / pts[0].group_dir / "report" / "lines.svg"
        where = f"`{shown(plot)}`" if plot.exists() else f"not written (`{shown(plot)}`)"
        lines += [f"#### `{group}`", "", f"criterion's line plot: {where}", ""]
        lines += [
            f"| row | {unit(group)} | time (ns) | ratio to the smallest (95% CI range) | "
            f"flat within {FLAT:g}× |",
            "|---|---|---|---|---|",
        ]
        for function, row in by_fn.items():
            base = row[0]
            for p in row:
                r = p.point / base.point
                lo, hi = p.lo / base.hi, p.hi / base.lo
                mark = "**reached**" if r <= FLAT else "**missed**"
                lines.append(
                    f"| {function} | {p.value_str} | {fmt_ns(p.point)} | "
                    f"{r:.2f}× ({lo:.2f}–{hi:.2f}) | {mark} |"
                )
        lines.append("")
    return lines


# --- plot ------------------------------------------------------------------

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
           "#e377c2", "#17becf"]
PANEL_W, PANEL_H = 460, 300
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 60, 20, 40, 50
LEGEND_H = 20


def nice_max(v: float) -> float:
    """A round upper bound for an axis from 0 to `v`."""
    if v <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * e:
            return m * e
    return 10 * e


def panel(x0: float, title: str, series: list[tuple[str, str, list[Point]]]) -> list[str]:
    """One plot: time (ns, from 0) against log2 of the size."""
    out: list[str] = []
    pw = PANEL_W - MARGIN_L - MARGIN_R
    ph = PANEL_H - MARGIN_T - MARGIN_B
    left, top = x0 + MARGIN_L, MARGIN_T
    xs = [math.log2(p.param) for _, _, pts in series for p in pts]
    lo_x, hi_x = math.floor(min(xs)), math.ceil(max(xs))
    if hi_x == lo_x:
        hi_x += 1
    y_max = nice_max(max(p.point for _, _, pts in series for p in pts) * 1.1)

    def sx(p: float) -> float:
        return left + (math.log2(p) - lo_x) / (hi_x - lo_x) * pw

    def sy(ns: float) -> float:
        return top + ph - ns / y_max * ph

    out.append(f'<text x="{left + pw / 2:.1f}" y="{top - 14}" text-anchor="middle" '
               f'font-weight="bold">{escape(title)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" '
               f'stroke="#888"/>')
    for i in range(5):
        ns = y_max * i / 4
        y = sy(ns)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" '
                   f'stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{ns:g}</text>')
    step = max(1, (hi_x - lo_x + 7) // 8)
    for e in range(lo_x, hi_x + 1, step):
        x = left + (e - lo_x) / (hi_x - lo_x) * pw
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" '
                   f'stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">'
                   f'{2 ** e}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{top + ph + 36}" text-anchor="middle">'
               f'{escape(title)} (log2 axis)</text>')
    out.append(f'<text x="{x0 + 14}" y="{top + ph / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 {x0 + 14} {top + ph / 2:.1f})">time (ns)</text>')
    for label, colour, pts in series:
        coords = " ".join(f"{sx(p.param):.1f},{sy(p.point):.1f}" for p in pts)
        out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" '
                   f'stroke-width="2"><title>{escape(label)}</title></polyline>')
        for p in pts:
            out.append(f'<circle cx="{sx(p.param):.1f}" cy="{sy(p.point):.1f}" r="3" '
                       f'fill="{colour}"><title>{escape(label)}, {p.value_str}: '
                       f'{p.point:.2f} ns</title></circle>')
    return out


def write_plot(crit: Path, path: Path) -> bool:
    """Writes an SVG of every `scale/` row (time against size, log2 x
    axis): one panel for the rows over ports, one for those over vCPUs.
    Returns whether there was anything to plot."""
    groups = load_points(crit)
    if not groups:
        return False
    panels: dict[str, list[tuple[str, str, list[Point]]]] = {}
    n = 0
    for group in ordered(groups):
        for function, pts in lines_of(groups[group]).items():
            label = group if len(lines_of(groups[group])) == 1 else f"{group} / {function}"
            panels.setdefault(unit(group), []).append((label, COLOURS[n % len(COLOURS)], pts))
            n += 1
    titles = list(panels)
    legend = [s for t in titles for s in panels[t]]
    width = PANEL_W * len(titles)
    height = PANEL_H + LEGEND_H * len(legend) + 10
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for i, t in enumerate(titles):
        out += panel(i * PANEL_W, t, panels[t])
    for i, (label, colour, _) in enumerate(legend):
        y = PANEL_H + i * LEGEND_H + 10
        out.append(f'<line x1="{MARGIN_L}" y1="{y}" x2="{MARGIN_L + 24}" y2="{y}" '
                   f'stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{MARGIN_L + 32}" y="{y + 4}">{escape(label)}</text>')
    out.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", type=Path,
                    default=Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")),
                    help="cargo's target directory (default: $CARGO_TARGET_DIR or ./target)")
    ap.add_argument("--plot", type=Path, default=PLOT,
                    help=f"where to write the plot (default: {shown(PLOT)})")
    ap.add_argument("--no-plot", action="store_true", help="print the tables only")
    args = ap.parse_args()
    crit = args.target.resolve() / "criterion"
    groups = load_points(crit)
    if not groups:
        sys.exit(f"no scale/ estimates under {crit}: run `{BENCH_CMD}` first")
    times = [p.mtime for pts in groups.values() for p in pts]
    fmt = "%Y-%m-%d %H:%M"
    print(f"Run: {datetime.datetime.fromtimestamp(min(times)).strftime(fmt)} – "
          f"{datetime.datetime.fromtimestamp(max(times)).strftime(fmt)} "
          f"(criterion estimates' times); command: `{BENCH_CMD}`.\n")
    print("\n".join(scale_section(crit)))
    if not args.no_plot and write_plot(crit, args.plot):
        print(f"wrote {shown(args.plot.resolve())}")


if __name__ == "__main__":
    main()
