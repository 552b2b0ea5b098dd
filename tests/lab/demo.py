#!/usr/bin/env python3
"""`make demo`: vmsnapd's main job on a built-in lab, left running for you to look at.

A throw-away pool `vlabdemo` with `vlabdemo/VM/vlabdemo-vm` holding the disk of a running counter guest of
the same name (so `domain = "auto"` finds it), a demo policy, then: `config check`, `once` (a consistent
cycle with a RAM dump), a second cycle, `list`, a dry-run prune, `status`, `check`, and a `restore` that
resumes the guest from its RAM dump: its counter continues at exactly the snapshot's value + 1.
--clean: remove every lab pool/domain (same as `make lab-clean`)."""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lab

DEMO_STATE = lab.LAB_DIR / "demo.env"
DEMO_DIR = lab.LAB_DIR / "demo"


def vmsnapd(config: Path, *args: str, ok: tuple[int, ...] = (0,)) -> str:
    """Run the CLI as an admin would and show it."""
    argv = [sys.executable, "-m", "vmsnapd", "-c", str(config), *args]
    print(f"\n$ vmsnapd -c {config} {' '.join(args)}")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    out = (proc.stdout + proc.stderr).rstrip()
    if out:
        print("  " + out.replace("\n", "\n  "))
    if proc.returncode not in ok:
        raise SystemExit(f"demo: vmsnapd {' '.join(args)} exited {proc.returncode}")
    return proc.stdout


def write_config() -> Path:
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    DEMO_DIR.chmod(0o755)  # QEMU (libvirt-qemu) writes the overlay and RAM file in overlay/
    overlay = DEMO_DIR / "overlay"
    overlay.mkdir(mode=0o711, exist_ok=True)
    config = DEMO_DIR / "vmsnapd.toml"
    config.write_text(f"""# written by tests/lab/demo.py (make demo)
[daemon]
state_dir = "{DEMO_DIR / 'state'}"
overlay_dir = "{overlay}"
ram_dir = "{DEMO_DIR / 'ram'}"
ram_staging_dir = "{DEMO_DIR / 'staging'}"
ram_compression = "zstd"

[templates.vms]
hourly = 24
daily = 7
monthly = 3
# The lab's guests run without KVM (TCG) on QEMU 7.2, whose live RAM capture of such guests can miss pages
# (docs/how-it-works.md): this host follows `vmsnapd check`'s advice. On a KVM host keep the default (true).
live = false

[datasets."{lab.DEMO_PREFIX}/VM"]
use_template = "vms"
recursive = true
process_children_only = true
domain = "auto"
""")
    config.chmod(0o600)
    return config


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
    import shutil
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    pool = lab.create_pool("2G", name=name)
    print(f"demo: created pool {pool.name} on sparse file {pool.file} (mounted at {pool.mountpoint})")
    parent = lab.create_dataset(pool, "VM")
    vmds = lab.create_dataset(parent.name, name + "-vm")
    print(f"demo: created datasets {parent.name} and {vmds.name}")
    vm = lab.create_vm(vmds, name=name + "-vm", token="demo")
    print(f"demo: defined and started TCG guest {vm.name}: counter disk {vm.disk.path}, "
          f"token disk {vm.token_path}")
    before, after = lab.wait_counter_advances(vm, by=10, timeout=30)
    print(f"demo: counter on the host-visible disk: {before} -> {after}")

    config = write_config()
    vmsnapd(config, "config", "check")
    vmsnapd(config, "once")
    time.sleep(1.1)
    vmsnapd(config, "snapshot", vm.name, "--period", "hourly")
    listing = vmsnapd(config, "list", vm.name)
    vmsnapd(config, "once", "--prune", "--dry-run")
    vmsnapd(config, "status")
    vmsnapd(config, "check", ok=(0, 1))

    first = listing.split()[0].split("@", 1)[1]
    at_snapshot = lab.snapshot_max_counter(f"{vmds.name}@{first}", vm.disk.relpath)
    print(f"\ndemo: {first} holds counter {at_snapshot}; the live disk is at {vm.max_counter()}. "
          "Changing the guest's token, then restoring:")
    lab.write_token(vm, "restored")
    vmsnapd(config, "restore", vm.name, first, "--force-stop", "--yes")
    lab.wait_counter_advances(vm, by=10, start=at_snapshot, timeout=30)
    rewritten, first_new = lab.resume_evidence(vm, at_snapshot, "restored")
    consistent = not rewritten and first_new == at_snapshot + 1
    print(f"demo: after the restore the guest resumed from RAM and wrote {first_new} next "
          f"(snapshot max {at_snapshot} + 1 = {at_snapshot + 1}), rewrote nothing older: "
          + ("consistent" if consistent else f"INCONSISTENT (rewritten: {rewritten[:5]})"))
    DEMO_STATE.write_text(f"POOL={pool.name}\nDATASET={vmds.name}\nDOMAIN={vm.name}\nDISK={vm.disk.path}\n"
                          f"TOKEN={vm.token_path}\nCONSOLE={vm.console_log}\nCONFIG={config}\n")
    print(f"""
The guest keeps running.
  try:          .venv/bin/vmsnapd -c {config} status   (or list, once --dry-run, check, run)
  console log:  {vm.console_log}   (live: virsh -c {lab.URI} console {vm.name}; leave with Ctrl-])
  state:        {DEMO_STATE}
  clean up:     make lab-clean   (removes every vlab* domain and pool)""")
    if not consistent:
        return 1
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
