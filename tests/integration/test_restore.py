"""`vmsnapd restore`: verify first, set the replaced state aside, resume from the RAM dump in one command, boot
without memory, clone; `--undo` puts the replaced state back, `--drop-aside` destroys it."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import libvirt
import pytest

pytestmark = [pytest.mark.lab]

ONE_HOURLY = {"hourly": 3, "daily": 0, "monthly": 0}
ASIDE_MARK = ".vmsnapd-replaced-"


def _asides(lab, dataset) -> list[str]:
    parent = str(dataset).rsplit("/", 1)[0]
    names = lab.zfs("list", "-H", "-o", "name", "-r", parent).split()
    return [n for n in names if n.startswith(f"{dataset}{ASIDE_MARK}") and "/" not in n[len(str(dataset)):]]


def _guids(lab, dataset) -> dict[str, str]:
    """guid of the dataset and of each of its snapshots: a rename, rollback or re-creation would show."""
    out = lab.zfs("get", "-H", "-p", "-r", "-o", "name,value", "guid", str(dataset))
    return {name: value for name, value in (line.split("\t") for line in out.splitlines())
            if name == str(dataset) or name.startswith(f"{dataset}@")}


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@contextmanager
def _zfs_wrapper(lab, name: str, first_line: str) -> Iterator[dict[str, str]]:
    """The environment for `vmsnapd_env.run(..., env=)` that puts first on PATH a `zfs` running `first_line` (a
    shell line seeing the arguments), then the real zfs; removed afterwards."""
    bindir = lab.make_run_dir(name)
    wrapper = bindir / "zfs"
    wrapper.write_text(f'#!/bin/sh\n{first_line}\nexec {shutil.which("zfs")} "$@"\n')
    wrapper.chmod(0o755)
    try:
        yield {"PATH": f"{bindir}:{os.environ['PATH']}"}
    finally:
        shutil.rmtree(bindir, ignore_errors=True)


def _snap_max(lab, vm, dataset, snap) -> int:
    return lab.snapshot_max_counter(f"{dataset.name}@{snap}", vm.disk.relpath)


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_restore_resumes_from_the_dump_exactly(lab, shared_vm, vmsnapd_env, compression):
    vm, dataset = shared_vm, shared_vm.disk.dataset
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
    lab.next_second()
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
    (aside,) = _asides(lab, dataset)  # the replaced state and the newer snapshot are kept, not destroyed
    assert newer in lab.snapshot_names(aside)
    refused = env.run("restore", "--drop-aside", vm.name, "--yes", expect=1)  # zfs-fuse (the lab): origin in use
    assert "shut it down" in refused.stderr and _asides(lab, dataset) == [aside]
    lab.stop_vm(vm)
    env.run("restore", "--drop-aside", vm.name, "--yes")
    assert not _asides(lab, dataset) and "kept aside" not in env.run("status").stdout


def test_restore_without_memory_boots_from_the_rolled_back_disk(lab, shared_vm, vmsnapd_env):
    vm, dataset = shared_vm, shared_vm.disk.dataset
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
    lab.stop_vm(vm)
    env.run("restore", "--drop-aside", vm.name, "--yes")


def test_restore_as_a_clone_leaves_the_original_alone(lab, shared_vm, vmsnapd_env):
    vm, dataset = shared_vm, shared_vm.disk.dataset
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


def test_restoring_one_period_of_a_cycle_keeps_the_cycles_other_periods(lab, shared_vm, vmsnapd_env):
    vm, dataset = shared_vm, shared_vm.disk.dataset
    lab.stop_vm(vm)
    env = vmsnapd_env
    env.datasets[dataset.name] = {"hourly": 2, "daily": 2, "monthly": 2, "domain": vm.name}
    env.run("once")
    cycle = sorted(lab.snapshot_names(dataset.name))
    assert len(cycle) == 3
    hourly = [s for s in cycle if s.endswith("_hourly")][0]
    lab.next_second()
    env.run("snapshot", dataset.name)
    later = [s for s in sorted(lab.snapshot_names(dataset.name)) if s not in cycle]
    proc = env.run("restore", vm.name, hourly, "--yes")
    assert sorted(lab.snapshot_names(dataset.name)) == cycle, proc.stdout  # only the later cycle went
    assert later[0] in proc.stdout
    lab.stop_vm(vm)
    env.run("restore", "--drop-aside", vm.name, "--yes")


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
    lab.stop_vm(vm)
    env.run("restore", "--drop-aside", vm.name, "--yes")


def _damage(dump: Path, manifest_matches: bool) -> None:
    """Flip one byte in the middle of the dump; with `manifest_matches`, make the manifest's checksum describe
    the damaged file, so that only the decompression test can notice (zstd)."""
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    if manifest_matches:
        manifest = dump.with_name(dump.name.split(".mem", 1)[0] + ".json")
        info = json.loads(manifest.read_text())
        info["sha256"], info["size"] = hashlib.sha256(data).hexdigest(), len(data)
        manifest.write_text(json.dumps(info))


@pytest.mark.parametrize("compression,manifest_matches", [("none", False), ("zstd", False), ("zstd", True)],
                         ids=["plain", "zstd-checksum", "zstd-decompression"])
def test_a_damaged_dump_is_refused_before_anything_changes(lab, shared_vm, vmsnapd_env, compression,
                                                           manifest_matches):
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.daemon["ram_compression"] = compression
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name}
    env.run("snapshot", dataset.name)
    (snap,) = lab.snapshot_names(dataset.name)
    lab.next_second()
    env.run("snapshot", dataset.name)
    (point,) = [p for p in json.loads(env.run("list", vm.name, "--json").stdout) if p["snapshot"] == snap]
    _damage(Path(point["ram_dump"]), manifest_matches)
    before_guids, before_id = _guids(lab, dataset), vm.dom.ID()

    proc = env.run("restore", vm.name, snap, "--force-stop", "--yes", expect=1)
    assert "nothing was changed" in proc.stderr, proc.stderr
    assert ("does not decompress" if manifest_matches else "checksum") in proc.stderr, proc.stderr
    assert vm.dom.isActive() and vm.dom.ID() == before_id, "the VM was stopped or restarted"
    assert _guids(lab, dataset) == before_guids, "a dataset or snapshot was changed"
    assert not _asides(lab, dataset)
    assert not (env.state_dir / "restore-asides.json").exists()
    lab.wait_counter_advances(vm, by=5, timeout=30)  # still writing to the very same disk


def test_undo_puts_back_the_exact_pre_restore_disks_and_newer_snapshots(lab, shared_vm, vmsnapd_env):
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name}
    env.run("snapshot", dataset.name)
    (snap,) = lab.snapshot_names(dataset.name)
    at_snapshot = _snap_max(lab, vm, dataset, snap)
    lab.wait_counter_advances(vm, by=20, start=at_snapshot)
    lab.next_second()
    env.run("snapshot", dataset.name)
    lab.wait_counter_advances(vm, by=20)
    lab.stop_vm(vm)
    pre_max, pre_sha = vm.max_counter(), _sha256(vm.disk.path)
    pre_snaps = lab.snapshot_names(dataset.name)
    pre_guids = {n.split("@", 1)[1]: g for n, g in _guids(lab, dataset).items() if "@" in n}
    assert len(pre_snaps) == 2 and pre_max > at_snapshot + 20

    proc = env.run("restore", vm.name, snap, "--yes")
    assert "resumed" in proc.stdout, proc.stdout
    lab.wait_counter_advances(vm, by=5, start=at_snapshot, timeout=30)
    assert vm.max_counter() < pre_max  # the restored disk, not the replaced one
    assert lab.snapshot_names(dataset.name) == [snap]
    (aside,) = _asides(lab, dataset)
    status = env.run("status").stdout
    assert aside in status and f"restore --undo {vm.name} --yes" in status and "--drop-aside" in status
    assert aside not in {d["dataset"] for d in json.loads(env.run("status", "--json").stdout)["datasets"]}
    env.run("once", "--prune")  # pruning leaves the aside and the newer cycle's RAM dump alone
    assert len(json.loads(env.run("list", vm.name, "--json").stdout)) == 1
    assert len(list((env.ram_dir / vm.name).glob("*.mem"))) == 2

    plan = env.run("restore", "--undo", vm.name, expect=None)
    assert plan.returncode in (2, 10), plan  # plan only, nothing done (10: EX_PLAN_ONLY of the reworked CLI)
    assert aside in plan.stdout and "add --yes" in plan.stderr and vm.dom.isActive()
    proc = env.run("restore", "--undo", vm.name, "--yes")
    assert f"put back {dataset.name}" in proc.stdout, proc.stdout
    assert not vm.dom.isActive()  # it was off before the restore
    assert _sha256(vm.disk.path) == pre_sha and vm.max_counter() == pre_max
    assert lab.snapshot_names(dataset.name) == pre_snaps
    assert {n.split("@", 1)[1]: g for n, g in _guids(lab, dataset).items() if "@" in n} == pre_guids
    assert not _asides(lab, dataset)
    assert lab.zfs("get", "-H", "-o", "value", "origin", dataset.name).strip() == "-"
    assert "kept aside" not in env.run("status").stdout
    env.run("restore", "--undo", vm.name, "--yes", expect=1)  # nothing left to undo
    # The put-back disks boot and continue after the pre-restore counter.
    lab.start_vm(vm)
    lab.wait_counter_advances(vm, by=3, start=pre_max)


def test_undo_of_a_force_stopped_vm_boots_it_again_with_a_child_dataset(lab, dataset, vmsnapd_env):
    child = lab.create_dataset(dataset)  # not a VM disk: it stays in place with its content
    (child.mountpoint / "keep").write_text("child data")
    vm = lab.create_vm(dataset)
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name}
    env.run("snapshot", dataset.name)
    (snap,) = lab.snapshot_names(dataset.name)
    at_snapshot = _snap_max(lab, vm, dataset, snap)
    _, pre_seen = lab.wait_counter_advances(vm, by=20, start=at_snapshot)
    lab.write_token(vm, "restored")  # every record written from here on carries it; the replaced disk has none
    env.run("restore", vm.name, snap, "--force-stop", "--yes")
    assert (child.mountpoint / "keep").read_text() == "child data"
    assert lab.zfs("list", "-H", "-o", "name", child.name).strip() == child.name
    lab.wait_counter_advances(vm, by=3, start=at_snapshot, timeout=30)
    assert not any(seq >= pre_seen for seq, tok in vm.records().values() if tok == "t0")
    proc = env.run("restore", "--undo", vm.name, "--yes")
    assert f"booted {vm.name}" in proc.stdout, proc.stdout
    assert (child.mountpoint / "keep").read_text() == "child data"
    assert not _asides(lab, dataset)
    # The put-back disk: records written before the restore (old token) beyond the snapshot are there again.
    assert any(seq >= pre_seen for seq, tok in vm.records().values() if tok == "t0")
    lab.wait_counter_advances(vm, by=3, start=pre_seen, timeout=60)  # and it booted from it



def test_a_failing_step_puts_everything_back(lab, shared_vm, vmsnapd_env):
    """`zfs promote` fails (a zfs wrapper first on PATH): the swap already made is undone, the VM boots again
    from its own disks."""
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name}
    env.run("snapshot", dataset.name)
    (snap,) = lab.snapshot_names(dataset.name)
    at_snapshot = _snap_max(lab, vm, dataset, snap)
    lab.next_second()
    env.run("snapshot", dataset.name)
    _, pre_seen = lab.wait_counter_advances(vm, by=20, start=at_snapshot)
    pre_guids = _guids(lab, dataset)
    lab.write_token(vm, "after")  # records written from now on carry it
    with _zfs_wrapper(lab, "zfsfail", 'if [ "$1" = promote ]; then echo "injected failure" >&2; exit 1; fi') as path:
        proc = env.run("restore", vm.name, snap, "--force-stop", "--yes", expect=1, env=path)
    assert "injected failure" in proc.stderr and "undone" in proc.stderr and "booted again" in proc.stderr, \
        proc.stderr
    assert _guids(lab, dataset) == pre_guids and not _asides(lab, dataset)
    assert lab.zfs("get", "-H", "-o", "value", "origin", dataset.name).strip() == "-"
    assert "kept aside" not in env.run("status").stdout
    # Booted from its own disk: it continues after what it wrote before the restore, not after the snapshot.
    assert vm.dom.isActive()
    lab.wait_counter_advances(vm, by=3, start=pre_seen, timeout=60)
    records = vm.records().values()
    assert any(tok == "t0" and seq >= pre_seen for seq, tok in records), "the pre-restore records are gone"
    assert not any(tok == "after" and seq <= pre_seen for seq, tok in records), "booted from the snapshot's disk"


def test_a_restore_killed_after_unmounting_is_undone_and_the_vm_boots(lab, shared_vm, vmsnapd_env):
    """vmsnapd killed (kill -9, by a zfs wrapper first on PATH) at its first `zfs rename`, i.e. after it unmounted
    the VM's dataset: `--undo` mounts it again and boots the VM from its own disk."""
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name}
    env.run("snapshot", dataset.name)
    (snap,) = lab.snapshot_names(dataset.name)
    _, pre_seen = lab.wait_counter_advances(vm, by=20, start=_snap_max(lab, vm, dataset, snap))
    with _zfs_wrapper(lab, "zfskill", 'if [ "$1" = rename ]; then kill -9 "$PPID"; exit 1; fi') as path:
        proc = env.run("restore", vm.name, snap, "--force-stop", "--yes", expect=None, env=path)
    assert proc.returncode == -9, (proc.returncode, proc.stderr)
    assert lab.zfs("get", "-H", "-o", "value", "mounted", dataset.name).strip() == "no"  # where the kill left it

    proc = env.run("restore", "--undo", vm.name, "--yes")

    assert f"mounted {dataset.name} again" in proc.stdout and f"booted {vm.name}" in proc.stdout, proc.stdout
    assert lab.zfs("get", "-H", "-o", "value", "mounted", dataset.name).strip() == "yes"
    assert not _asides(lab, dataset)
    lab.wait_counter_advances(vm, by=3, start=pre_seen, timeout=60)  # booted from its own disk
