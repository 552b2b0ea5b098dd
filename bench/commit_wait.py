#!/usr/bin/env python3
"""The commit-back of the default method, waited for by polling every 50 ms (vmsnapd before session 19) or woken
by libvirt's block-job events (vmsnapd.blockjob), side by side in one run on one lab guest.

One running counter guest on a fresh lab dataset gets N cycles of each, interleaved (ABBA order, so a drift in the
machine's load hits both alike): `vmsnapd --debug snapshot DATASET` (method overlay, live RAM capture unless
`--no-memory`), run through a launcher that sets the adapter's wait before the CLI starts:
- `poll50`: `Hypervisor.block_job_events = False`, `block_job_recheck_s = 0.05` — the job read every 50 ms;
- `events`: the defaults (events, and a re-read every 0.5 s as the safety net).
The commit-back phase is read from vmsnapd's own --debug lines: `cycle → snapshotted … elapsed_ms=A` (the zfs
snapshot is done) to `cycle → committed … elapsed_ms=B` (every disk pivoted back onto its base and the job gone):
B - A. Also the whole cycle's wall time. Prints median/mean/max per way and the ratio events/poll50. After every
cycle the guest must write again and its snapshots and RAM dumps are removed. Never asserts timings.

    sudo flock /work/wt/bench.lock .venv/bin/python bench/commit_wait.py [-n 10] [--no-memory] [--json F]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PYTHON, REPO, BenchError, check_ok, lab, median, ratio, tear_down  # noqa: E402

STEP_RE = re.compile(r"cycle → (snapshotted|committed) .*? elapsed_ms=(\d+)")
CALL_RE = re.compile(r"blockcommit \S+ \S+: on its base after (\d+) ms \(libvirt said: ([^)]*)\)")
WAYS = ("poll50", "events")
# Runs vmsnapd's CLI with the wait of `way` (argv: WAY, then the CLI's arguments).
LAUNCHER = """
import sys
from vmsnapd.hypervisor import Hypervisor
if sys.argv.pop(1) == "poll50":
    Hypervisor.block_job_events = False
    Hypervisor.block_job_recheck_s = 0.05
from vmsnapd.cli import main
sys.exit(main(sys.argv[1:]))
"""


def one_cycle(way: str, config: Path, dataset: str) -> dict:
    t0 = time.monotonic()
    proc = subprocess.run([PYTHON, "-c", LAUNCHER, way, "-c", str(config), "--debug", "snapshot", dataset],
                          capture_output=True, text=True, timeout=300, cwd=str(REPO))
    wall = time.monotonic() - t0
    check_ok(proc, f"vmsnapd snapshot {dataset} ({way})")
    steps = {state: int(ms) for state, ms in STEP_RE.findall(proc.stderr)}
    if set(steps) != {"snapshotted", "committed"}:
        raise BenchError(f"no snapshotted/committed lines in the --debug log ({way}):\n{proc.stderr[-3000:]}")
    calls = CALL_RE.findall(proc.stderr)  # the adapter's own line: blockCommit call to the job gone
    return {"way": way, "commit_ms": steps["committed"] - steps["snapshotted"], "wall_s": wall,
            "call_ms": sum(int(ms) for ms, _ in calls), "libvirt_said": [said for _, said in calls]}


def clear(dataset: str, ram_dir: Path) -> None:
    for name in lab.snapshot_names(dataset):
        lab.zfs("destroy", f"{dataset}@{name}")
    if ram_dir.is_dir():
        for f in ram_dir.iterdir():
            f.unlink()


def run(args) -> list[dict]:
    root = pool = None
    rows: list[dict] = []
    try:
        lab.check_lab()
        root = lab.make_run_dir("commitwait")
        pool = lab.create_pool("2G")
        ds = lab.create_dataset(pool, name="guest")
        vm = lab.create_vm(ds, memory_mib=args.memory_mib)
        lab.wait_counter_advances(vm, by=20, timeout=90)
        config = lab.write_vmsnapd_config(root, {ds.name: {
            "domain": vm.name, "method": "overlay", "live": True, "memory": args.memory, "quiesce": "off",
            "hourly": 100}}, daemon={"ram_compression": "none"})
        print(f"guest {vm.name} ({args.memory_mib} MiB) on {ds.name}; {args.n} cycles per way, "
              f"memory={'live' if args.memory else 'none'}", flush=True)
        for i in range(args.n):
            order = WAYS if i % 2 == 0 else WAYS[::-1]
            for way in order:
                rows.append(one_cycle(way, config, ds.name))
                clear(ds.name, root / "ram" / vm.name)
                lab.wait_counter_advances(vm, by=3, timeout=60)  # on its base and writing again
            print(f"  round {i + 1}/{args.n}: " + ", ".join(f"{r['way']} {r['commit_ms']} ms" for r in rows[-2:]),
                  flush=True)
    finally:
        tear_down(pool, root)
    return rows


def summary(rows: list[dict]) -> dict[str, dict]:
    out = {}
    for way in WAYS:
        ms = [r["commit_ms"] for r in rows if r["way"] == way]
        mine = [r for r in rows if r["way"] == way]
        out[way] = {"n": len(ms), "median_ms": median(ms), "mean_ms": statistics.fmean(ms), "max_ms": max(ms),
                    "min_ms": min(ms), "wall_s": median([r["wall_s"] for r in mine]),
                    "call_median_ms": median([r["call_ms"] for r in mine]),
                    "ready_events": sum("ready" in said for r in mine for said in r["libvirt_said"])}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=10, help="cycles per way (default 10)")
    ap.add_argument("--memory-mib", type=int, default=lab.GUEST_MIB, help="guest RAM")
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="disk-only cycles (no RAM capture)")
    ap.add_argument("--json", type=Path, help="write every cycle and the summary here")
    args = ap.parse_args()
    try:
        rows = run(args)
    except (BenchError, lab.LabError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    s = summary(rows)
    print("\ncommit-back (zfs snapshot done → every disk on its base), ms:")
    print("way       n   median   mean    min    max   in commit_active (median)   READY seen   cycle wall (median)")
    for way, t in s.items():
        print(f"{way:8s} {t['n']:2d} {t['median_ms']:8.0f} {t['mean_ms']:6.0f} {t['min_ms']:6.0f} {t['max_ms']:6.0f}"
              f"   {t['call_median_ms']:24.0f}   {t['ready_events']:10d}   {t['wall_s']:.2f} s")
    print(f"ratio events/poll50: median {ratio(s['events']['median_ms'], s['poll50']['median_ms'])}, "
          f"mean {ratio(s['events']['mean_ms'], s['poll50']['mean_ms'])}")
    if args.json:
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M:%S"), "load": os.getloadavg(),
                                         "rows": rows, "summary": s}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
