#!/usr/bin/env python3
"""`make demo`: a throw-away pool with a running counter guest, left running for you to look at.

Extend here (later: write a demo config and run `vmsnapd once` on the guest).  --clean: remove every lab
pool/domain (same as `make lab-clean`)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lab  # noqa: E402

DEMO_STATE = lab.LAB_DIR / "demo.env"


def clean() -> int:
    removed = lab.cleanup_leftovers(everything=True)
    DEMO_STATE.unlink(missing_ok=True)
    print("lab-clean: removed " + (", ".join(removed) if removed else "nothing (no lab pools/domains)"))
    return 0


def demo() -> int:
    lab.check_lab()
    removed = lab.cleanup_leftovers()  # only things of processes that are gone (e.g. an earlier demo)
    if removed:
        print(f"demo: removed leftovers of earlier runs: {', '.join(removed)}")
    # the demo's objects have fixed names (kept by test runs' cleanup): replace an earlier demo
    name = lab.DEMO_PREFIX
    if name + "-vm" in [d.name() for d in lab.conn().listAllDomains()]:
        lab.destroy_vm(name + "-vm")
        print(f"demo: removed the earlier demo guest {name}-vm")
    if name in lab.list_pools():
        lab.destroy_pool(name)
        print(f"demo: removed the earlier demo pool {name}")
    lab.cleanup_leftovers()
    pool = lab.create_pool("2G", name=name)
    print(f"demo: created pool {pool.name} on sparse file {pool.file} (mounted at {pool.mountpoint})")
    vmds = lab.create_dataset(pool, "vm")
    print(f"demo: created dataset {vmds.name}")
    vm = lab.create_vm(vmds, name=name + "-vm", token="demo")
    print(f"demo: defined and started TCG guest {vm.name}: counter disk {vm.disk.path}, "
          f"token disk {vm.token_path}")
    for _ in range(3):
        before, after = lab.wait_counter_advances(vm, by=10, timeout=30)
        print(f"demo: counter on the host-visible disk: {before} -> {after}")
        time.sleep(0.5)
    snap = lab.snapshot(vmds, "demo")
    print(f"demo: zfs snapshot {snap} holds counter {lab.snapshot_max_counter(snap, vm.disk.relpath)}; "
          f"live disk now at {vm.max_counter()}")
    DEMO_STATE.write_text(f"POOL={pool.name}\nDATASET={vmds.name}\nDOMAIN={vm.name}\nDISK={vm.disk.path}\n"
                          f"TOKEN={vm.token_path}\nCONSOLE={vm.console_log}\n")
    print(f"""
The guest keeps running.
  console log:  {vm.console_log}   (live: virsh -c {lab.URI} console {vm.name}; leave with Ctrl-])
  counter:      .venv/bin/python -c "import sys; sys.path.insert(0,'tests/lab'); import lab; print(lab.read_max_counter('{vm.disk.path}'))"
  state:        {DEMO_STATE}
  clean up:     make lab-clean   (removes every vlab* domain and pool)""")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clean", action="store_true", help="remove every lab pool and domain")
    a = ap.parse_args()
    try:
        return clean() if a.clean else demo()
    except lab.LabUnavailable as e:
        print(f"demo: lab not available: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
