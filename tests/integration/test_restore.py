"""`vmsnapd restore`: rollback + resume from the RAM dump in one command, boot without memory, clone."""
from __future__ import annotations

import json
import time

import libvirt
import pytest

pytestmark = [pytest.mark.lab]

ONE_HOURLY = {"hourly": 3, "daily": 0, "monthly": 0}


def _snap_max(lab, vm, dataset, snap) -> int:
    return lab.snapshot_max_counter(f"{dataset.name}@{snap}", vm.disk.relpath)


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_restore_resumes_from_the_dump_exactly(lab, dataset, vmsnapd_env, compression):
    vm = lab.create_vm(dataset)
    env = vmsnapd_env
    env.daemon["ram_compression"] = compression
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name}
    env.run("snapshot", dataset.name)
    (snap,) = sorted(lab.snapshot_names(dataset.name))
    (point,) = json.loads(env.run("list", vm.name, "--json").stdout)
    assert point["snapshot"] == snap and point["domain"] == vm.name and point["ram_dump"]
    assert "RAM" in env.run("list", dataset.name).stdout
    at_snapshot = _snap_max(lab, vm, dataset, snap)
    lab.wait_counter_advances(vm, by=20, start=at_snapshot)
    time.sleep(1.1)
    env.run("snapshot", dataset.name)  # a newer restore point, destroyed by the rollback
    newer = [s for s in sorted(lab.snapshot_names(dataset.name)) if s != snap][0]

    refused = env.run("restore", vm.name, snap, expect=1)
    assert "--force-stop" in refused.stderr and vm.dom.isActive()
    plan = env.run("restore", vm.name, snap, "--force-stop", expect=10)  # plan shown, nothing done
    assert "add --yes" in plan.stderr and newer in plan.stdout and vm.dom.isActive()

    lab.write_token(vm, "restored")
    proc = env.run("restore", vm.name, snap, "--force-stop", "--yes")
    assert "resumed" in proc.stdout, proc.stdout
    assert sorted(lab.snapshot_names(dataset.name)) == [snap]
    lab.wait_counter_advances(vm, by=10, start=at_snapshot, timeout=30)
    rewritten, first_new = lab.resume_evidence(vm, at_snapshot, "restored")
    assert not rewritten, f"RAM older than the disk: records {rewritten[:5]} rewritten"
    assert first_new == at_snapshot + 1, f"resumed at {first_new}, snapshot max was {at_snapshot}"


def test_restore_without_memory_boots_from_the_rolled_back_disk(lab, dataset, vmsnapd_env):
    vm = lab.create_vm(dataset)
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name}
    env.run("snapshot", dataset.name)
    (snap,) = sorted(lab.snapshot_names(dataset.name))
    at_snapshot = _snap_max(lab, vm, dataset, snap)
    lab.stop_vm(vm)
    proc = env.run("restore", dataset.name, snap, "--no-memory", "--yes")
    assert "booted" in proc.stdout
    # A boot, not a resume: the guest's init scans the disk and continues after the snapshot's max.
    lab.wait_counter_advances(vm, by=5, start=at_snapshot, timeout=60)
    assert "seq" not in vm.console() or vm.dom.isActive()


def test_restore_as_a_clone_leaves_the_original_alone(lab, dataset, vmsnapd_env):
    vm = lab.create_vm(dataset)
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name}
    env.run("snapshot", dataset.name)
    (snap,) = sorted(lab.snapshot_names(dataset.name))
    clone = lab.unique_name("clone")
    lab.CREATED_VMS.append(clone)  # the lab's cleanup removes it with the others
    proc = env.run("restore", vm.name, snap, "--clone", clone, "--yes")
    assert f"booted {clone}" in proc.stdout
    conn = vm.dom.connect()
    dom = conn.lookupByName(clone)
    assert dom.isActive() and vm.dom.isActive()
    assert dom.UUIDString() != vm.dom.UUIDString()
    clone_ds = f"{dataset.name.rsplit('/', 1)[0]}/{clone}"
    xml = dom.XMLDesc(0)
    assert f"/{clone}/" in xml and str(vm.disk.path) not in xml
    try:
        dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    finally:
        lab.destroy_dataset(clone_ds)


def test_restoring_one_period_of_a_cycle_keeps_the_cycles_other_periods(lab, dataset, vmsnapd_env):
    vm = lab.create_vm(dataset)
    lab.stop_vm(vm)
    env = vmsnapd_env
    env.datasets[dataset.name] = {"hourly": 2, "daily": 2, "monthly": 2, "domain": vm.name}
    env.run("once")
    cycle = sorted(lab.snapshot_names(dataset.name))
    assert len(cycle) == 3
    hourly = [s for s in cycle if s.endswith("_hourly")][0]
    time.sleep(1.1)
    env.run("snapshot", dataset.name)
    later = [s for s in sorted(lab.snapshot_names(dataset.name)) if s not in cycle]
    proc = env.run("restore", vm.name, hourly, "--yes")
    assert sorted(lab.snapshot_names(dataset.name)) == cycle, proc.stdout  # only the later cycle went
    assert later[0] in proc.stdout
    lab.stop_vm(vm)


def test_restore_of_a_quiesced_dump_thaws_the_guest(lab, agent_vm, vmsnapd_env):
    import libvirt_qemu

    vm = agent_vm
    dataset = vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name, "quiesce": "required",
                                  "exclude_disks": [vm.fs_disk.target]}  # the ext4 disk lives outside
    env.run("snapshot", dataset.name)
    (snap,) = sorted(lab.snapshot_names(dataset.name))
    proc = env.run("restore", vm.name, snap, "--force-stop", "--yes")
    assert "thawed" in proc.stdout, proc.stdout
    status = libvirt_qemu.qemuAgentCommand(vm.dom, '{"execute":"guest-fsfreeze-status"}', 10, 0)
    assert '"thawed"' in status, status
    lab.wait_counter_advances(vm, by=5, timeout=30)
