#!/usr/bin/env python3
"""How long the guest stands still per cycle: vmsnapd's capture modes and the classic pre/post scripts, side by
side in one run on the same guest, and where the paused window goes.

For each guest size (default 128 and 1024 MiB; the guest dirties `--dirty-mib` MiB of RAM continuously, a tmpfs
file copied over and over, besides its disk counter) one TCG counter guest on a fresh lab dataset gets N cycles of:
- `vmsnapd snapshot DATASET` per mode: overlay/live (the default), overlay/not-live, pause/live, pause/not-live
  (config: domain = the VM, method, live, quiesce = "off", ram_compression = "none"), the RAM file staged on a
  tmpfs (`ram_staging_dir` in /dev/shm: what the default /run/vmsnapd/staging is on a systemd host; this lab's
  /run is no tmpfs); pause = vmsnapd's own `pause_ms` (manifest) and, the figure compared, SUSPENDED→RESUMED seen
  by this benchmark's libvirt listener;
- overlay/live and pause/live with `ram_staging_dir = ""`: the RAM file written in `overlay_dir` on disk, as
  vmsnapd did before the staging folder;
- classic: `virsh snapshot-create-as --memspec … --diskspec …` (not live) → `zfs snapshot` →
  `virsh blockcommit --active --pivot`, the scripts people ran around sanoid;
- breakdown: vmsnapd's pause/live path done by hand with every step stamped (bench/_window.py), and the same with
  QEMU's migration downtime limit lowered to `--downtime-ms` (a prototype: fewer dirty pages left for the stop).
After every cycle the guest's counter must advance again. Once per guest: the QMP round trip (query-status through
libvirt) and whether QEMU here can take a `background-snapshot`.

Prints median/max pause per method with the ratio to the classic scripts, the breakdown, and writes everything
as JSON (`--json`, for bench/report.py's table and plot). Never asserts timings. Exit 0 when every cycle
succeeded, 1 otherwise.

    sudo .venv/bin/python bench/pause.py [-n 5] [--sizes 128,1024] [--dirty-mib 64] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchError, check_ok, lab, median, ratio, tear_down, vmsnapd  # noqa: E402
from _window import (Watcher, background_snapshot_probe, classic_cycle, pause_method_steps,  # noqa: E402
                     pause_ms, qmp_round_trip_ms)

MODES = [("overlay", True), ("overlay", False), ("pause", True), ("pause", False)]
ON_DISK = ", RAM file on disk"  # ram_staging_dir = "": the RAM file in overlay_dir
# vmsnapd's own steps (its --debug log: "cycle → STATE ... elapsed_ms=N"), in the order they happen
STEP_RE = re.compile(r"cycle → (freezing|frozen|snapshotted|resumed|committed|unfrozen) .*? elapsed_ms=(\d+)")
DEFAULT = "overlay/live"
CLASSIC = "classic scripts"
BREAKDOWN_KEYS = ["ram_live_before_stop", "stop_to_return", "qemu_downtime", "zfs_snapshot", "resume_call",
                  "resume_event_lag"]


def mode_name(method: str, live: bool) -> str:
    return f"{method}/{'live' if live else 'not-live'}"


def product_cycle(config: Path, dataset: str, ram_dir: Path, events, name: str) -> dict:
    mark = events.mark()
    t0 = time.monotonic()
    proc = vmsnapd(config, "--debug", "snapshot", dataset)
    wall = time.monotonic() - t0
    check_ok(proc, f"vmsnapd snapshot {dataset} ({name})")
    found = sorted(ram_dir.glob("*.json")) if ram_dir.is_dir() else []
    if len(found) != 1:
        raise BenchError(f"expected one RAM manifest in {ram_dir}, found {[p.name for p in found]}\n"
                         f"{proc.stderr[-2000:]}")
    m = json.loads(found[0].read_text())
    for f in ram_dir.iterdir():  # 1 GiB per dump: keep the disk free, the manifest was read
        f.unlink()
    pauses = events.wait_resumed(mark)
    steps = {state: int(ms) for state, ms in STEP_RE.findall(proc.stderr)}
    return {"pause_ms": pause_ms(pauses), "vmsnapd_pause_ms": m.get("pause_ms"), "wall": wall,
            "size": m.get("raw_size") or m.get("size"), "pauses": len(pauses), "steps": steps}


def dirty_for(memory_mib: int, wanted: int) -> int:
    """The guest keeps a source and a copy in tmpfs (2x): at most an eighth of its RAM, or it runs out."""
    return min(wanted, memory_mib // 8)


def one_guest(root: Path, pool, watcher: Watcher, memory_mib: int, args, staging: Path) -> dict:
    ds = lab.create_dataset(pool, name=f"guest{memory_mib}")
    t0 = time.monotonic()
    dirty = dirty_for(memory_mib, args.dirty_mib)
    vm = lab.create_vm(ds, memory_mib=memory_mib, dirty_mib=dirty)
    rows: dict[str, list[dict]] = {}
    out = {"memory_mib": memory_mib, "dirty_mib": dirty, "rows": rows}
    try:
        lab.wait_counter_advances(vm, by=20, timeout=90)  # booted, dirtier started, settled
        print(f"{memory_mib} MiB guest {vm.name} (dirtying {dirty} MiB) on {ds.name}: up in "
              f"{time.monotonic() - t0:.1f}s; {args.n} cycles per method", flush=True)
        events = watcher.watch(vm.name)
        out["qmp_round_trip_ms"] = qmp_round_trip_ms(vm.dom)
        out["background_snapshot"] = background_snapshot_probe(vm.dom)
        print(f"  QMP round trip (query-status via libvirt) {out['qmp_round_trip_ms']:.1f} ms; "
              f"background-snapshot: {out['background_snapshot']}", flush=True)
        plan = [(mode_name(m, live), ("product", m, live, str(staging))) for m, live in MODES]
        plan += [(mode_name(m, True) + ON_DISK, ("product", m, True, "")) for m in ("overlay", "pause")]
        plan += [(CLASSIC, ("classic",)), ("pause/live by hand", ("hand", None)),
                 (f"pause/live by hand, downtime {args.downtime_ms} ms", ("hand", args.downtime_ms))]
        for i in range(args.n):  # interleaved: load changes hit every method alike
            for name, how in plan:
                if how[0] == "product":
                    config = lab.write_vmsnapd_config(root, {ds.name: {
                        "domain": vm.name, "method": how[1], "live": how[2], "memory": True, "quiesce": "off",
                        "hourly": 100}}, daemon={"ram_compression": "none", "ram_staging_dir": how[3]})
                    r = product_cycle(config, ds.name, root / "ram" / vm.name, events, name)
                elif how[0] == "classic":
                    r = classic_cycle(vm, ds.name, events, i)
                else:
                    tag = i if how[1] is None else 1000 + i
                    r = pause_method_steps(vm, ds.name, events, vm.workdir / f"hand{tag}.mem", tag, live=True,
                                           max_downtime_ms=how[1])
                rows.setdefault(name, []).append(r)
                lab.wait_counter_advances(vm, by=3, timeout=60)  # resumed and writing again
            print(f"  round {i + 1}/{args.n}: " + ", ".join(f"{k} {v[-1]['pause_ms']:.0f}" for k, v in rows.items()),
                  flush=True)
    finally:
        lab.destroy_vm(vm)
    return out


def summarize(guest: dict) -> list[dict]:
    rows = guest["rows"]
    classic = median([r["pause_ms"] for r in rows.get(CLASSIC, [])])
    table = []
    for name, rr in rows.items():
        p = [r["pause_ms"] for r in rr]
        table.append({"memory_mib": guest["memory_mib"], "method": name, "median_ms": median(p), "max_ms": max(p),
                      "vs_classic": median(p) / classic if classic else None,
                      "wall_s": median([r["wall"] for r in rr]), "dump_mib": (rr[-1].get("size") or 0) / 2**20})
    return table


def step_gaps(rows: list[dict]) -> str:
    """Median ms between vmsnapd's consecutive logged states (journal write included in each)."""
    order = ["freezing", "frozen", "snapshotted", "resumed", "unfrozen"]
    out = []
    for a, b in zip(order, order[1:], strict=False):
        gaps = [r["steps"][b] - r["steps"][a] for r in rows if a in r.get("steps", {}) and b in r["steps"]]
        if gaps:
            out.append(f"{a}→{b} {median(gaps):.0f}")
    return ", ".join(out)


def print_results(guests: list[dict]) -> None:
    print("\nguest     method                                   pause median    max   vs classic   wall   RAM")
    for g in guests:
        for t in summarize(g):
            mark = "  <- default" if t["method"] == DEFAULT else ""
            print(f"{t['memory_mib']:5d} MiB {t['method']:40s} {t['median_ms']:8.0f} ms {t['max_ms']:6.0f} ms"
                  f" {ratio(t['median_ms'], median([r['pause_ms'] for r in g['rows'][CLASSIC]])):>9s}"
                  f" {t['wall_s']:6.2f} s {t['dump_mib']:6.0f} MiB{mark}")
    print("\nwhere the pause/live window goes (by hand, median ms; 'live passes' run before the stop):")
    for g in guests:
        for name, rr in g["rows"].items():
            if "by hand" not in name:
                continue
            parts = ", ".join(f"{k} {median([r[k] for r in rr if r.get(k) is not None]):.0f}" for k in BREAKDOWN_KEYS)
            print(f"  {g['memory_mib']} MiB, {name}: pause {median([r['pause_ms'] for r in rr]):.0f} = {parts}")
        for name in ("pause/live", "pause/live" + ON_DISK):
            prod = g["rows"].get(name, [])
            if not prod:
                continue
            ours = [r["vmsnapd_pause_ms"] for r in prod if r.get("vmsnapd_pause_ms") is not None]
            gaps = step_gaps(prod)
            print(f"  {g['memory_mib']} MiB, vmsnapd {name}: pause {median([r['pause_ms'] for r in prod]):.0f} "
                  f"(its own pause_ms {median(ours):.0f}); its log: {gaps}")
        print(f"  {g['memory_mib']} MiB: QMP round trip {g['qmp_round_trip_ms']:.1f} ms; "
              f"background-snapshot: {g['background_snapshot']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=5, help="cycles per method (default 5)")
    ap.add_argument("--sizes", default="128,1024", help="guest memory sizes in MiB, comma-separated")
    ap.add_argument("--dirty-mib", type=int, default=64, help="RAM the guest dirties continuously (0: idle guest)")
    ap.add_argument("--downtime-ms", type=int, default=10, help="the lowered migration downtime limit tried")
    ap.add_argument("--json", type=Path, help="write the results here (for bench/report.py)")
    args = ap.parse_args()
    pool = root = watcher = None
    guests: list[dict] = []
    try:
        lab.check_lab()
        root = lab.make_run_dir("pause")
        tmpfs = Path("/dev/shm") / root.name  # the RAM file's end costs nothing on tmpfs
        tmpfs.mkdir(mode=0o700)  # removed by tear_down
        pool = lab.create_pool("2G")
        watcher = Watcher()
        for size in (int(s) for s in args.sizes.split(",")):
            guests.append(one_guest(root, pool, watcher, size, args, tmpfs / "staging"))
    except (BenchError, lab.LabError, ValueError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        tear_down(pool, root, watcher)
    print_results(guests)
    print("pause = SUSPENDED->RESUMED seen by this benchmark's own libvirt listener; 'not-live' saves all RAM with "
          "the guest stopped; 'pause' keeps it stopped through the zfs snapshot, 'overlay' switches to overlays "
          "while stopped.")
    if args.json:
        args.json.write_text(json.dumps({"guests": guests, "table": [t for g in guests for t in summarize(g)]},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
