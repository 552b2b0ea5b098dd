#!/usr/bin/env python3
"""RAM dumps: bytes and seconds per GiB of guest, `ram_compression = "none"` against `"zstd"`, zstd single- against
multi-threaded, and what the dump costs in pause and cycle wall time (memory = true against false).

For each guest size (default 128, 512, 1024 MiB) one TCG counter guest (optionally dirtying `--dirty-mib`) on a
fresh lab dataset gets, interleaved, N cycles each of `vmsnapd snapshot` (method overlay, live: the default) with
- memory = false (disk only: no dump),
- memory = true, ram_compression = "none",
- memory = true, ram_compression = "zstd" (the product runs `zstd -q -T0 -3`, then `zstd -t`).
The manifests give the raw and stored sizes; the pause is SUSPENDED→RESUMED seen by this benchmark's libvirt
listener. The last raw dump is also compressed here with `zstd -3 -T1` and `-T0` (and tested with `zstd -t`)
to show what the threads buy. Never asserts sizes or times. Exit 0 when every cycle succeeded, 1 otherwise.

    sudo .venv/bin/python bench/ram_size.py [--sizes 128,512,1024] [-n 2] [--dirty-mib 0] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchError, check_ok, lab, median, tear_down, vmsnapd  # noqa: E402
from _window import Watcher, pause_ms  # noqa: E402

VARIANTS = [("no dump", False, "none"), ("dump, none", True, "none"), ("dump, zstd", True, "zstd")]
GIB = 2**30


def timed(argv: list[str]) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return time.monotonic() - t0


def zstd_threads(raw: Path, work: Path, rounds: int = 3) -> dict:
    """Median seconds of `zstd -3 -T1` and `-T0` on the same file, alternating (load hits both alike)."""
    times: dict[str, list[float]] = {}
    size = 0
    for _ in range(rounds):
        for threads in ("1", "0"):
            target = work / f"bench-T{threads}.zst"
            target.unlink(missing_ok=True)
            times.setdefault(f"compress_T{threads}_s", []).append(
                timed(["zstd", "-q", f"-T{threads}", "-3", "-o", str(target), "--", str(raw)]))
            times.setdefault(f"test_T{threads}_s", []).append(timed(["zstd", "-q", "-t", "--", str(target)]))
            size = target.stat().st_size
            target.unlink()
    return {**{k: median(v) for k, v in times.items()}, "zstd_size": size}


def cycle(root: Path, ds, vm, events, memory: bool, compression: str, keep_raw: Path | None) -> dict:
    config = lab.write_vmsnapd_config(root, {ds.name: {"domain": vm.name, "method": "overlay", "live": True,
                                                      "memory": memory, "quiesce": "off", "hourly": 100}},
                                      daemon={"ram_compression": compression})
    ram_dir = root / "ram" / vm.name
    mark = events.mark()
    t0 = time.monotonic()
    check_ok(vmsnapd(config, "snapshot", ds.name), f"vmsnapd snapshot {ds.name}")
    wall = time.monotonic() - t0
    r = {"wall": wall, "pause_ms": pause_ms(events.wait_resumed(mark)), "raw": 0, "stored": 0}
    if memory:
        (manifest,) = sorted(ram_dir.glob("*.json"))
        m = json.loads(manifest.read_text())
        r.update(raw=m["raw_size"], stored=m["size"])
        if keep_raw is not None and compression == "none":
            (dump,) = [p for p in ram_dir.iterdir() if p.name.endswith(".mem")]
            shutil.move(dump, keep_raw)
    if ram_dir.is_dir():
        for f in ram_dir.iterdir():
            f.unlink()
    return r


def one_guest(root: Path, pool, watcher: Watcher, memory_mib: int, args) -> dict:
    ds = lab.create_dataset(pool, name=f"guest{memory_mib}")
    dirty = min(args.dirty_mib, memory_mib // 8)
    vm = lab.create_vm(ds, memory_mib=memory_mib, dirty_mib=dirty)
    rows: dict[str, list[dict]] = {}
    raw_copy = root / f"raw{memory_mib}.mem"
    try:
        lab.wait_counter_advances(vm, by=20, timeout=90)
        events = watcher.watch(vm.name)
        for _ in range(args.n):
            for name, memory, compression in VARIANTS:
                rows.setdefault(name, []).append(cycle(root, ds, vm, events, memory, compression, raw_copy))
                lab.wait_counter_advances(vm, by=3, timeout=60)
        threads = zstd_threads(raw_copy, root)
    finally:
        raw_copy.unlink(missing_ok=True)
        lab.destroy_vm(vm)
    out = {"memory_mib": memory_mib, "dirty_mib": dirty, "rows": rows, "zstd": threads}
    print_guest(out)
    return out


def print_guest(g: dict) -> None:
    gib = g["memory_mib"] * 2**20 / GIB
    base = g["rows"]["no dump"]
    print(f"{g['memory_mib']} MiB guest (dirtying {g['dirty_mib']} MiB):", flush=True)
    for name, rr in g["rows"].items():
        raw, stored = median([r["raw"] for r in rr]), median([r["stored"] for r in rr])
        print(f"  {name:11s} pause {median([r['pause_ms'] for r in rr]):6.0f} ms   wall {median([r['wall'] for r in rr]):6.2f} s"
              f" (+{median([r['wall'] for r in rr]) - median([r['wall'] for r in base]):5.2f} s)   raw "
              f"{raw / gib / 2**20:7.1f} MiB/GiB   stored {stored / gib / 2**20:7.1f} MiB/GiB", flush=True)
    z = g["zstd"]
    raw = median([r["raw"] for r in g["rows"]["dump, none"]])
    for t in ("1", "0"):
        print(f"  zstd -3 -T{t}: {z[f'compress_T{t}_s'] / gib:5.2f} s/GiB of guest "
              f"({raw / 2**20 / z[f'compress_T{t}_s']:6.0f} MiB/s of dump), test {z[f'test_T{t}_s'] / gib:5.2f} s/GiB",
              flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="128,512,1024", help="guest memory sizes in MiB, comma-separated")
    ap.add_argument("-n", type=int, default=2, help="cycles per variant (default 2)")
    ap.add_argument("--dirty-mib", type=int, default=0, help="RAM the guest dirties continuously (0: idle)")
    ap.add_argument("--json", type=Path, help="write the results here (for bench/report.py)")
    args = ap.parse_args()
    pool = root = watcher = None
    guests = []
    try:
        lab.check_lab()
        root = lab.make_run_dir("ramsize")
        pool = lab.create_pool("1G")
        watcher = Watcher()
        print(f"{os.cpu_count()} CPUs; zstd level 3 as the product", flush=True)
        for size in (int(s) for s in args.sizes.split(",")):
            guests.append(one_guest(root, pool, watcher, size, args))
    except (BenchError, lab.LabError, ValueError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        tear_down(pool, root, watcher)
    if args.json:
        args.json.write_text(json.dumps({"guests": guests}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
