#!/usr/bin/env python3
"""The table of ratios of one `make bench` run, and the PNG plot of guest pause against guest size and method.

Reads the JSON files the benchmarks wrote into DIR (default build/bench): pause.json (bench/pause.py),
ram.json (bench/ram_size.py), consistency.json (bench/consistency.py), and from any other *.json a list
`"ratios": [{"benchmark": ..., "what": ..., "value": ..., "goal": ...}]` (how other benchmarks contribute rows).
Writes DIR/pause-vs-size.png when matplotlib is installed (`pip install -e '.[bench]'`; else says so).
Never asserts anything; exit 0 unless DIR holds no result at all.

    .venv/bin/python bench/report.py [DIR]
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

DEFAULT = "overlay/live"
CLASSIC = "classic scripts"


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"warning: cannot read {path}: {e}", file=sys.stderr)
        return None


def pause_rows(data: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for t in data.get("table", []):
        goal = ""
        if t["method"] == DEFAULT and t["memory_mib"] >= 1024:
            goal = "median <= 40 ms, max <= 80 ms, <= 0.20x classic"
        vs = f"{t['vs_classic']:.2f}x classic" if t.get("vs_classic") else "-"
        rows.append(("pause", f"{t['memory_mib']} MiB {t['method']}",
                     f"median {t['median_ms']:.0f} ms, max {t['max_ms']:.0f} ms, {vs}", goal))
    return rows


def ram_rows(data: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for g in data.get("guests", []):
        gib = g["memory_mib"] / 1024
        med = lambda name, key, g=g: statistics.median([r[key] for r in g["rows"][name]])  # noqa: E731
        base_wall, base_pause = med("no dump", "wall"), med("no dump", "pause_ms")
        for name in ("dump, none", "dump, zstd"):
            rows.append(("ram", f"{g['memory_mib']} MiB {name}",
                         f"{med(name, 'stored') / gib / 2**20:.0f} MiB/GiB stored, wall +{med(name, 'wall') - base_wall:.2f} s, "
                         f"pause {med(name, 'pause_ms'):.0f} ms (no dump: {base_pause:.0f} ms)", ""))
        z = g["zstd"]
        rows.append(("ram", f"{g['memory_mib']} MiB zstd -T0 vs -T1",
                     f"{z['compress_T0_s'] / gib:.2f} vs {z['compress_T1_s'] / gib:.2f} s/GiB "
                     f"(-T0 speed-up {z['compress_T1_s'] / max(z['compress_T0_s'], 1e-9):.2f}x)", ""))
    return rows


def consistency_rows(data: dict) -> list[tuple[str, str, str, str]]:
    return [("consistency", "restores continuing at exactly max + 1", f"{data['consistent']}/{data['total']}",
             "all")]


def other_rows(data: dict) -> list[tuple[str, str, str, str]]:
    return [(str(r.get("benchmark", "?")), str(r.get("what", "?")), str(r.get("value", "?")), str(r.get("goal", "")))
            for r in data.get("ratios", [])]


def plot(data: dict, out: Path) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (.venv/bin/pip install -e '.[bench]')"
    by_method: dict[str, list[tuple[int, float, float]]] = {}
    for t in data.get("table", []):
        by_method.setdefault(t["method"], []).append((t["memory_mib"], t["median_ms"], t["max_ms"]))
    fig, ax = plt.subplots(figsize=(8, 5))
    for method, pts in sorted(by_method.items()):
        pts.sort()
        xs = [p[0] for p in pts]
        meds = [p[1] for p in pts]
        errs = [[0] * len(pts), [p[2] - p[1] for p in pts]]
        ax.errorbar(xs, meds, yerr=errs, marker="o", capsize=3, label=method,
                    linewidth=2.5 if method in (DEFAULT, CLASSIC) else 1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")  # classic not-live pauses are ~10x the live ones
    sizes = sorted({t["memory_mib"] for t in data.get("table", [])})
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("guest RAM (MiB)")
    ax.set_ylabel("guest pause per cycle (ms): median, bar to max")
    ax.set_title("Guest pause per snapshot cycle by method (busy TCG guest, lab)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return f"plot: {out}"


def main() -> int:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("build/bench")
    rows: list[tuple[str, str, str, str]] = []
    pause = None
    for path in sorted(folder.glob("*.json")):
        data = load(path)
        if data is None:
            continue
        if path.name == "pause.json":
            pause = data
            rows += pause_rows(data)
        elif path.name == "ram.json":
            rows += ram_rows(data)
        elif path.name == "consistency.json":
            rows += consistency_rows(data)
        else:
            rows += other_rows(data)
    if not rows:
        print(f"no benchmark results in {folder}", file=sys.stderr)
        return 1
    widths = [max(len(r[i]) for r in rows + [("benchmark", "what", "measured", "goal")]) for i in range(4)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    print(line(("benchmark", "what", "measured", "goal")))
    print(line(tuple("-" * w for w in widths)))
    for r in rows:
        print(line(r))
    if pause is not None:
        print(plot(pause, folder / "pause-vs-size.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
