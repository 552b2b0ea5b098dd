#!/usr/bin/env python3
"""How long the guest stands still per cycle, for each of vmsnapd's capture modes, side by side in one run.

One 128 MiB TCG counter guest on a fresh lab dataset.  For each mode -- overlay/live, overlay/not-live,
pause/live, pause/not-live -- N cycles of `vmsnapd snapshot DATASET` (config: domain = the VM, method, live,
hourly = 10, quiesce = "off": the counter guest has no agent).  The pause is what vmsnapd itself measured from
libvirt's SUSPENDED/RESUMED lifecycle events and wrote as `pause_ms` into the cycle's RAM manifest
(ram_dir/<domain>/*.json).  After every cycle the guest's counter must advance again (it was resumed).

Prints median and max pause per mode, the ratio to overlay/live, and the wall time of a whole cycle (the CLI
call: Python start, RAM dump, zfs snapshot, blockcommit).  Never asserts timings.  Exit 0 when every cycle
succeeded, 1 otherwise.

    sudo .venv/bin/python bench/pause.py [-n 5]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchError, check_ok, lab, median, ratio, remove_tree, vmsnapd

MODES = [("overlay", True), ("overlay", False), ("pause", True), ("pause", False)]


def mode_name(method: str, live: bool) -> str:
    return f"{method}/{'live' if live else 'not-live'}"


def manifests(ram_dir: Path) -> dict[Path, dict]:
    out = {}
    for f in sorted(ram_dir.glob("*.json")) if ram_dir.is_dir() else []:
        try:
            out[f] = json.loads(f.read_text())
        except (OSError, ValueError):
            pass
    return out


def run_mode(root: Path, dataset: str, vm, method: str, live: bool, n: int) -> dict:
    config = lab.write_vmsnapd_config(root, {dataset: {"domain": vm.name, "method": method, "live": live,
                                                   "memory": True, "quiesce": "off", "hourly": 10}})
    ram_dir = root / "ram" / vm.name
    pauses, walls = [], []
    for i in range(n):
        seen = set(manifests(ram_dir))
        t0 = time.monotonic()
        proc = vmsnapd(config, "snapshot", dataset)
        wall = time.monotonic() - t0
        check_ok(proc, f"vmsnapd snapshot {dataset} ({mode_name(method, live)}, cycle {i + 1})")
        new = {f: m for f, m in manifests(ram_dir).items() if f not in seen}
        if len(new) != 1:
            raise BenchError(f"expected one new RAM manifest in {ram_dir} after cycle {i + 1}, found "
                             f"{sorted(p.name for p in new)}\n{proc.stderr[-2000:]}")
        m = next(iter(new.values()))
        if m.get("method") != method or m.get("live") != live:
            raise BenchError(f"manifest says method={m.get('method')} live={m.get('live')}, "
                             f"asked {method} live={live}")
        if m.get("pause_ms") is None:
            raise BenchError(f"manifest {next(iter(new))} has no pause_ms")
        pauses.append(int(m["pause_ms"]))
        walls.append(wall)
        lab.wait_counter_advances(vm, by=3, timeout=30)  # resumed and writing again
    return {"pauses": pauses, "walls": walls, "size": m.get("raw_size") or m.get("size")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=5, help="cycles per mode (default 5)")
    args = ap.parse_args()
    pool = vm = root = None
    results: dict[str, dict] = {}
    try:
        lab.check_lab()
        root = lab.make_run_dir("pause")
        pool = lab.create_pool("1G")
        ds = lab.create_dataset(pool, name="guest")
        t0 = time.monotonic()
        vm = lab.create_vm(ds, memory_mib=128)
        print(f"128 MiB counter guest {vm.name} on {ds.name}: booted in {time.monotonic() - t0:.1f}s; "
              f"{args.n} cycles per mode", flush=True)
        for method, live in MODES:
            name = mode_name(method, live)
            r = run_mode(root, ds.name, vm, method, live, args.n)
            results[name] = r
            print(f"  {name:17s} pause_ms {r['pauses']}  cycle wall s {[round(w, 2) for w in r['walls']]}",
                  flush=True)
    except (BenchError, lab.LabError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        if vm is not None:
            try:
                lab.destroy_vm(vm)
            except Exception as e:  # noqa: BLE001
                print(f"warning: could not remove domain {vm.name}: {e}", file=sys.stderr)
        if pool is not None:
            try:
                lab.destroy_pool(pool)
            except Exception as e:  # noqa: BLE001
                print(f"warning: could not destroy pool {pool}: {e}", file=sys.stderr)
        if root is not None:
            remove_tree(root)

    base = median(results["overlay/live"]["pauses"])
    print()
    print("mode               pause median   max   vs overlay/live   cycle wall median (s)   RAM dump")
    for name, r in results.items():
        med = median(r["pauses"])
        print(f"  {name:17s} {med:8.0f} ms {max(r['pauses']):5d} ms   {ratio(med, base):>8s}"
              f"          {median(r['walls']):8.2f}          {(r['size'] or 0) / 2**20:6.1f} MiB")
    print("pause = SUSPENDED->RESUMED as vmsnapd measured it (manifest pause_ms); 'not-live' saves RAM with the "
          "guest stopped, 'pause' keeps it stopped through the zfs snapshot, 'overlay' resumes it before.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
