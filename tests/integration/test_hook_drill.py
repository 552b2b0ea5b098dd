"""pre_snapshot hooks that change the VM, on the lab (drill, session 19; the logic: tests/unit/test_hook_changes_vm.py).

- A hook that takes its own disk-only external snapshot (`virsh snapshot-create-as --disk-only`, the old scripts'
  way) moves the guest's writes onto an overlay outside the dataset: the cycle fails before touching anything —
  it used to take the snapshot, a restore point whose disk stood still since the hook and whose RAM was of now.
- A hook that pauses the guest (method "pause", the VM groups' method): the guest is captured and left paused —
  it used to be resumed by vmsnapd, which resumes only what it paused.
"""
from __future__ import annotations

import libvirt
import pytest

pytestmark = [pytest.mark.lab]

URI = "qemu:///system"
ONE_HOURLY = {"hourly": 1, "daily": 0, "monthly": 0}


def test_a_hook_that_moves_the_disk_onto_its_own_overlay_fails_the_cycle_untouched(lab, running_vm, vmsnapd_env):
    vm, dataset = running_vm, running_vm.disk.dataset
    hook_overlay = vm.workdir / "hook-vda.qcow2"
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name, "hooks": {"pre_snapshot": [
        "virsh", "-c", URI, "snapshot-create-as", vm.name, "hook-own", "--disk-only", "--no-metadata", "--atomic",
        "--diskspec", f"vda,snapshot=external,file={hook_overlay}", "--diskspec", f"{vm.token_target},snapshot=no"]}}

    proc = env.run("snapshot", dataset.name, expect=1)

    assert f"the disks of {vm.name} changed after the cycle began" in proc.stdout, proc.stdout
    assert str(hook_overlay) in proc.stdout
    assert lab.snapshot_names(dataset.name) == []
    assert not (env.ram_dir / vm.name).exists() or not any((env.ram_dir / vm.name).iterdir())
    assert not env.overlay_dir.exists() or not any(env.overlay_dir.iterdir())
    assert not (env.state_dir / "cycles").exists() or not any((env.state_dir / "cycles").iterdir())
    assert f"'{hook_overlay}'" in vm.dom.XMLDesc(0)  # the hook's overlay is the hook's: left as it is
    assert vm.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_a_guest_the_hook_paused_is_left_paused(lab, running_vm, vmsnapd_env):
    vm, dataset = running_vm, running_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name, "method": "pause", "quiesce": "off",
                                  "hooks": {"pre_snapshot": ["virsh", "-c", URI, "suspend", vm.name]}}

    env.run("snapshot", dataset.name)

    assert len(lab.snapshot_names(dataset.name)) == 1
    assert vm.dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED  # the hook paused it: not vmsnapd's to resume
    assert not (env.state_dir / "cycles").exists() or not any((env.state_dir / "cycles").iterdir())
    vm.dom.resume()
    lab.wait_counter_advances(vm, by=3)
