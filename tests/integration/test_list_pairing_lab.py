"""`list` says a restore point has RAM exactly when `restore` resumes it from RAM (vmsnapd/rampairing.py): on the
lab, a VM's dataset renamed after a cycle (`zfs rename`, the mountpoint kept, the config following the new name) —
the dump's manifest names the old dataset; `list` showed "disk only" while restore resumed from the dump."""
from __future__ import annotations

import json
import time

import pytest

pytestmark = [pytest.mark.lab]


def test_list_shows_the_ram_of_a_renamed_datasets_restore_point(lab, running_vm, vmsnapd_env):
    vm, dataset = running_vm, running_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {"hourly": 3, "daily": 0, "monthly": 0, "domain": vm.name}
    env.run("snapshot", dataset.name)
    (snap,) = lab.snapshot_names(dataset.name)
    lab.stop_vm(vm)
    renamed = f"{dataset.name}r"
    _rename(lab, dataset.name, renamed, mountpoint=str(dataset.mountpoint))  # the VM's disk path stays valid
    try:
        env.datasets = {renamed: env.datasets[dataset.name]}

        (point,) = json.loads(env.run("list", vm.name, "--json").stdout)
        assert point["dataset"] == renamed and point["snapshot"] == snap and point["ram_dump"], point
        assert f"{renamed}@{snap}" in (line := env.run("list").stdout) and "RAM" in line, line
        plan = json.loads(env.run("restore", vm.name, snap, "--json", expect=10).stdout)["plan"]
        assert plan["resume_from_memory"] and plan["ram_dump"] == point["ram_dump"], plan
        (entry,) = json.loads(env.run("status", "--json").stdout)["datasets"]
        assert entry["ram_dumps"] == 1, entry
    finally:
        _rename(lab, renamed, dataset.name)


def _rename(lab, old: str, new: str, mountpoint: str | None = None) -> None:
    """Unmounted, renamed, mounted again (at `mountpoint`, else the inherited one) — as vmsnapd's restore renames.
    zfs-fuse refuses to rename a mounted dataset ("dataset is busy"), and says "busy" to the unmount for a while
    after the QEMU holding a file there ended (docs/development.md, Traps)."""
    _while_busy(lab, "umount", old)
    _while_busy(lab, "rename", old, new)
    if mountpoint:
        lab.zfs("set", f"mountpoint={mountpoint}", new)
    else:
        lab.zfs("inherit", "mountpoint", new)
    if lab.zfs("get", "-H", "-o", "value", "mounted", new).strip() != "yes":
        lab.zfs("mount", new)


def _while_busy(lab, *args: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            lab.zfs(*args)
            return
        except lab.LabError as exc:
            if "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
