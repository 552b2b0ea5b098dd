#!/usr/bin/env python3
"""RAM dump size per cycle against the guest's memory size, raw and with `ram_compression = "zstd"`.

For each guest size (default 128, 512, 1024 MiB) one idle TCG counter guest on a fresh lab dataset gets one
`vmsnapd snapshot` cycle (method overlay, live, zstd); the cycle's manifest gives the raw dump size (`raw_size`),
the stored size (`size`) and so the zstd ratio. Numbers go into docs/faq.md ("How big are the RAM dumps?").
Never asserts sizes. Exit 0 when every cycle succeeded, 1 otherwise.

    sudo .venv/bin/python bench/ram_size.py [--sizes 128,512,1024]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchError, check_ok, lab, remove_tree, vmsnapd


def one_guest(root: Path, pool, memory_mib: int) -> dict:
    ds = lab.create_dataset(pool, name=f"guest{memory_mib}")
    vm = lab.create_vm(ds, memory_mib=memory_mib)
    try:
        lab.wait_counter_advances(vm, by=20, timeout=60)  # booted and settled
        config = lab.write_vmsnapd_config(root, {ds.name: {"domain": vm.name, "method": "overlay", "live": True,
                                                          "memory": True, "quiesce": "off", "hourly": 3}},
                                          daemon={"ram_compression": "zstd"})
        t0 = time.monotonic()
        check_ok(vmsnapd(config, "snapshot", ds.name), f"vmsnapd snapshot {ds.name}")
        wall = time.monotonic() - t0
        (manifest,) = sorted((root / "ram" / vm.name).glob("*.json"))
        m = json.loads(manifest.read_text())
        return {"memory_mib": memory_mib, "raw": m["raw_size"], "stored": m["size"], "wall": wall,
                "pause_ms": m.get("pause_ms")}
    finally:
        lab.destroy_vm(vm)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="128,512,1024", help="guest memory sizes in MiB, comma-separated")
    args = ap.parse_args()
    pool = root = None
    rows = []
    try:
        lab.check_lab()
        root = lab.make_run_dir("ramsize")
        pool = lab.create_pool("1G")
        for size in (int(s) for s in args.sizes.split(",")):
            rows.append(one_guest(root, pool, size))
            r = rows[-1]
            print(f"  {size:5d} MiB guest: raw {r['raw'] / 2**20:7.1f} MiB, zstd {r['stored'] / 2**20:7.1f} MiB",
                  flush=True)
    except (BenchError, lab.LabError, ValueError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        if pool is not None:
            try:
                lab.destroy_pool(pool)
            except Exception as e:  # noqa: BLE001
                print(f"warning: could not destroy pool {pool}: {e}", file=sys.stderr)
        if root is not None:
            remove_tree(root)
    print("\nguest RAM   raw dump   raw/guest   zstd (stored)   zstd ratio   cycle wall")
    for r in rows:
        print(f"{r['memory_mib']:6d} MiB {r['raw'] / 2**20:7.1f} MiB {r['raw'] / (r['memory_mib'] * 2**20):8.2f}"
              f"   {r['stored'] / 2**20:9.1f} MiB   {r['raw'] / max(r['stored'], 1):8.2f}x   {r['wall']:6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
