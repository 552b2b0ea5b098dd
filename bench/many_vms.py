#!/usr/bin/env python3
"""Many VMs in one pass (issue 13, goal 3, the measuring half): N running counter guests (default 8) snapshotted
by one `vmsnapd once --take`, against one guest alone, in the same run.

Each guest: a 128 MiB TCG counter guest (tests/lab/lab.py) with its disk on a dataset of its own; config per
dataset `domain = <guest>`, memory on, quiesce off (the counter guest has no agent), the default capture method,
the RAM files staged on a tmpfs (`ram_staging_dir` in /dev/shm: the default /run/vmsnapd/staging on a systemd host;
this lab's /run is no tmpfs);
`[daemon] max_parallel = N` (VM cycles at once; the shipped default is 2) unless --max-parallel says otherwise.
First the single-guest figure: a config with guest 1 only (hourly) and one pass; then all N guests in one pass
(daily: due on every guest, guest 1 included). Pauses are what vmsnapd measured (libvirt SUSPENDED->RESUMED,
`pause_ms` in each RAM manifest). Then one guest (the last) is restored from the N-guest pass's snapshot and
must continue at exactly the snapshot's max counter + 1 with no record rewritten (the consistency check of
tests/integration/test_restore.py).

If fewer than N guests can be started (memory, boot timeout on a loaded machine), it goes on with fewer and
prints why. Prints a table (wall time and pauses vs the single guest; goals: wall <= 1.5x, no pause > 1.5x the
single guest's), writes bench/results/many_vms-<time>.json. Never asserts timings; exit 0 when every cycle and
the restore worked.

    sudo .venv/bin/python bench/many_vms.py [-n 8] [--max-parallel N]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchError, check_ok, lab, median, tear_down, vmsnapd  # noqa: E402
from _scale import goal_rows, table, write_results  # noqa: E402

GUEST_MIB = 128
GUEST_COST_MIB = GUEST_MIB + 120  # QEMU/TCG overhead per guest, measured roughly on the lab


def mem_available_mib() -> int:
    m = re.search(r"MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    return int(m.group(1)) // 1024 if m else 0


def manifests(ram_dir: Path) -> dict[str, dict]:
    out = {}
    for f in sorted(ram_dir.glob("*/*.json")) if ram_dir.is_dir() else []:
        try:
            out[str(f)] = json.loads(f.read_text())
        except (OSError, ValueError):
            pass
    return out


def one_pass(root: Path, guests: list, period: str, max_parallel: int) -> dict:
    """`vmsnapd once --take` with a config of `guests` (dataset, vm), each due `period`; wall time, pause per guest."""
    datasets = {ds.name: {"domain": vm.name, "memory": True, "quiesce": "off", "hourly": 0, "daily": 0,
                          "monthly": 0, period: 3} for ds, vm in guests}
    staging = Path("/dev/shm") / root.name  # removed by tear_down
    staging.mkdir(mode=0o700, exist_ok=True)
    config = lab.write_vmsnapd_config(root, datasets, daemon={"max_parallel": max_parallel,
                                                              "ram_staging_dir": str(staging / "staging")})
    seen = set(manifests(root / "ram"))
    t0 = time.monotonic()
    proc = vmsnapd(config, "once", "--take", timeout=1800)
    wall = time.monotonic() - t0
    check_ok(proc, f"vmsnapd once --take ({len(guests)} guest(s))")
    new = {p: m for p, m in manifests(root / "ram").items() if p not in seen}
    pauses = {}
    for _, vm in guests:
        mine = [m for p, m in new.items() if f"/{vm.name}/" in p]
        if len(mine) != 1 or mine[0].get("pause_ms") is None:
            raise BenchError(f"{vm.name}: expected one new RAM manifest with pause_ms, found {mine}")
        pauses[vm.name] = int(mine[0]["pause_ms"])
    # Each target's cycle duration as `once` prints it (`ok  TARGET: took … [N ms]`): their sum over the wall time
    # tells whether the cycles overlapped (close to the number of guests) or ran one after another (close to 1).
    cycles = [int(m.group(1)) for m in re.finditer(r"^ok .*\[(\d+) ms\]$", proc.stdout, re.M)]
    return {"wall": wall, "pauses": pauses, "method": sorted({m.get("method") for m in new.values()}),
            "cycle_ms": cycles, "overlap": sum(cycles) / 1000 / wall if wall else 0.0, "config": config}


def restore_check(root: Path, config: Path, ds, vm) -> dict:
    """Restore `vm` from its newest snapshot; it must continue at max + 1, nothing rewritten."""
    snap = sorted(lab.snapshot_names(ds.name))[-1]
    at_snapshot = lab.snapshot_max_counter(f"{ds.name}@{snap}", vm.disk.relpath)
    lab.wait_counter_advances(vm, by=10, start=at_snapshot, timeout=120)
    lab.write_token(vm, "restored")
    proc = vmsnapd(config, "restore", vm.name, snap, "--force-stop", "--yes", timeout=600)
    check_ok(proc, f"vmsnapd restore {vm.name} {snap}")
    lab.wait_counter_advances(vm, by=10, start=at_snapshot, timeout=120)
    rewritten, first_new = lab.resume_evidence(vm, at_snapshot, "restored")
    return {"guest": vm.name, "snapshot": snap, "snapshot_max": at_snapshot, "first_new": first_new,
            "rewritten": rewritten[:10], "consistent": not rewritten and first_new == at_snapshot + 1}


def start_guests(pool, n: int) -> tuple[list, str]:
    guests, why = [], ""
    room = (mem_available_mib() - 512) // GUEST_COST_MIB
    if room < n:
        why = f"only {mem_available_mib()} MiB available: room for {max(room, 0)} guests of {GUEST_MIB} MiB"
        n = max(room, 1)
    for i in range(n):
        ds = lab.create_dataset(pool, name=f"g{i + 1}")
        t0 = time.monotonic()
        try:
            vm = lab.create_vm(ds, memory_mib=GUEST_MIB)
        except lab.LabError as e:
            why = f"guest {i + 1} did not start: {str(e).splitlines()[0]}"
            break
        guests.append((ds, vm))
        print(f"  guest {i + 1}: {vm.name} on {ds.name}, running in {time.monotonic() - t0:.0f}s", flush=True)
    return guests, why


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=8, help="guests (default 8)")
    ap.add_argument("--max-parallel", type=int, default=None, help="[daemon] max_parallel (default: -n)")
    args = ap.parse_args()
    pool = root = None
    guests: list = []
    out: dict = {"asked": args.n, "load_at_start": os.getloadavg()}
    try:
        lab.check_lab()
        root = lab.make_run_dir("manyvms")
        pool = lab.create_pool("2G")
        print(f"starting {args.n} counter guests of {GUEST_MIB} MiB (TCG)", flush=True)
        guests, why = start_guests(pool, args.n)
        if len(guests) < args.n:
            print(f"  going on with {len(guests)} guest(s): {why}", flush=True)
        if not guests:
            raise BenchError(f"no guest started: {why}")
        jobs = args.max_parallel or len(guests)
        out.update(guests=len(guests), fewer_because=why, max_parallel=jobs)
        single = one_pass(root, guests[:1], "hourly", jobs)
        print(f"  one guest:  pass {single['wall']:.1f}s, pause {single['pauses']} ms", flush=True)
        many = one_pass(root, guests, "daily", jobs)
        print(f"  {len(guests)} guests: pass {many['wall']:.1f}s, pauses {sorted(many['pauses'].values())} ms, "
              f"cycles {many['cycle_ms']} ms",
              flush=True)
        check = restore_check(root, many["config"], *guests[-1])
        print(f"  restore of {check['guest']}: continues at {check['first_new']} after snapshot max "
              f"{check['snapshot_max']}, rewritten {check['rewritten']}: "
              f"{'consistent' if check['consistent'] else 'NOT consistent'}", flush=True)
        out["load_after_passes"] = os.getloadavg()  # the 1-minute figure covers both passes
        out.update(single={k: v for k, v in single.items() if k != "config"},
                   many={k: v for k, v in many.items() if k != "config"}, restore=check)
    except (BenchError, lab.LabError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        tear_down(pool, root)

    s_wall, m_wall = single["wall"], many["wall"]
    s_pause = next(iter(single["pauses"].values()))
    worst = max(many["pauses"].values())
    rows = [("pass wall time (s)", f"{s_wall:.1f}", f"{m_wall:.1f}", f"{m_wall / s_wall:.2f}x", "<= 1.5x",
             "met" if m_wall <= 1.5 * s_wall else "NOT met"),
            ("pause median (ms)", s_pause, f"{median(list(many['pauses'].values())):.0f}",
             f"{median(list(many['pauses'].values())) / max(s_pause, 1):.2f}x", "", ""),
            ("pause max (ms)", s_pause, worst, f"{worst / max(s_pause, 1):.2f}x", "<= 1.5x",
             "met" if worst <= 1.5 * s_pause else "NOT met"),
            ("cycles overlapping (sum of cycle times / wall)", f"{single['overlap']:.1f}", f"{many['overlap']:.1f}",
             "", "", ""),
            ("cycle time median (s)", f"{median(single['cycle_ms']) / 1000:.1f}",
             f"{median(many['cycle_ms']) / 1000:.1f}", "", "", ""),
            ("restore consistent", "", "yes" if check["consistent"] else "NO", "", "max + 1, none rewritten",
             "met" if check["consistent"] else "NOT met")]
    print()
    print(f"{len(guests)} running {GUEST_MIB} MiB TCG counter guests vs one; max_parallel = {jobs}; "
          f"method {many['method']}; one run on a shared 2-core machine (noisy); load average "
          f"{out['load_at_start'][0]:.2f} before the guests, {out['load_after_passes'][0]:.2f} after the passes")
    print(table(rows, ("", "1 guest", f"{len(guests)} guests", "ratio", "goal", "")))
    ratios = goal_rows(rows, lambda r: f"{r[3] or r[2]} (1 guest {r[1]}, {len(guests)} guests {r[2]})", 4)
    print(f"results: {write_results('many_vms', out, ratios)}")
    return 0 if check["consistent"] else 1


if __name__ == "__main__":
    sys.exit(main())
