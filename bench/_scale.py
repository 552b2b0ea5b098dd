"""Bits the scale benchmarks share (scale_vs_sanoid.py, idle_scale.py, many_vms.py): the results file, a table.

Each run is kept in bench/results/<name>-<time>.json (the history) and, when BENCH_OUT is set (`make bench-*` sets
it), also written as BENCH_OUT/<name>.json with its goal rows as `ratios`, which bench/report.py puts in the one
table of `make bench`."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What the numbers were measured on: they are only comparable within one run on a shared, loaded machine."""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "?")
    except OSError:
        model = "?"
    return {"host": platform.node(), "cpus": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "loadavg_at_end": os.getloadavg()}


def write_results(name: str, data: dict, ratios: list[dict] | None = None) -> Path:
    """`ratios`: the rows with a goal, {"what", "value", "goal"} (bench/report.py's common table)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    text = json.dumps({"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
                       "ratios": [{"benchmark": name, **r} for r in ratios or []], **data},
                      indent=1, default=str) + "\n"
    path.write_text(text)
    if os.environ.get("BENCH_OUT"):
        out = Path(os.environ["BENCH_OUT"])
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(text)
    return path


def goal_rows(rows: list[tuple], value: Callable[[tuple], str], goal_at: int) -> list[dict]:
    """The rows of a printed table that carry a goal (column `goal_at`, with the verdict after it), for
    write_results' `ratios`."""
    return [{"what": str(r[0]).strip(), "value": value(r),
             "goal": f"{r[goal_at]} ({r[goal_at + 1]})" if len(r) > goal_at + 1 and r[goal_at + 1] else str(r[goal_at])}
            for r in rows if len(r) > goal_at and r[goal_at]]


def table(rows: list[tuple], header: tuple) -> str:
    cells = [tuple(str(c) for c in r) for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                     for r in cells)
