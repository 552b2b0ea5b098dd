"""Self-tests proving the lab is real: a running guest writes a counter the host sees, ZFS snapshots freeze it,
and the classic hand-made snapshot cycle (external snapshot + memory → zfs snapshot → blockcommit → rollback →
restore) resumes the guest exactly where the snapshot was taken."""
from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.lab


def test_counter_advances_on_host_visible_disk(lab, shared_vm):
    running_vm = shared_vm
    before, after = lab.wait_counter_advances(running_vm, by=10, timeout=30)
    assert after >= before + 10
    recs = running_vm.records()
    # records sit at sector seq % 1000 and carry the token from the token disk
    assert all(sector == seq % lab.RING for sector, (seq, _) in recs.items())
    assert {tok for _, tok in recs.values()} == {"t0"}
    lab.write_token(running_vm, "fresh")
    seen = lab.wait_counter_advances(running_vm, by=5, timeout=30)[1]
    assert any(tok == "fresh" for s, tok in running_vm.records().values() if s <= seen)


def test_zfs_snapshot_clone_shows_earlier_counter(lab, shared_vm):
    running_vm = shared_vm
    disk = running_vm.disk
    snap = lab.snapshot(disk.dataset)
    at_snap = lab.snapshot_max_counter(snap, disk.relpath)
    assert at_snap > 0
    lab.wait_counter_advances(running_vm, by=10, timeout=30)
    live = running_vm.max_counter()
    assert live > at_snap
    # the snapshot is frozen: reading it again gives the same value
    assert lab.snapshot_max_counter(snap, disk.relpath) == at_snap


def test_two_disks_get_the_same_counter(lab, two_disk_vm):
    lab.wait_counter_advances(two_disk_vm, by=5)
    lab.stop_vm(two_disk_vm)
    a = lab.read_max_counter(two_disk_vm.disks[0].path)
    b = lab.read_max_counter(two_disk_vm.disks[1].path)
    # vda is written before vdb in each iteration: a consistent point has vda ahead by 0 or 1, never equal-only
    assert b > 0 and a - b in (0, 1)


def test_stopped_vm_continues_counter_after_boot(lab, stopped_vm):
    assert not stopped_vm.is_active()
    last = stopped_vm.max_counter()
    assert last > 0
    time.sleep(0.3)
    assert stopped_vm.max_counter() == last  # nothing writes while stopped
    lab.start_vm(stopped_vm)
    recs = stopped_vm.records()
    new = sorted(s for s, _ in recs.values() if s > last)
    assert new and new[0] == last + 1  # continues, does not restart at 1


def _wait_block_job_ready(dom, disk: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = dom.blockJobInfo(disk, 0)
        if info and info.get("end", 0) > 0 and info["cur"] == info["end"] and "ready='yes'" in dom.XMLDesc(0):
            return
        time.sleep(0.05)
    raise AssertionError(f"block job on {disk} not ready within {timeout}s: {dom.blockJobInfo(disk, 0)}")


def test_hand_made_cycle_restores_counter_exactly(lab, shared_vm):
    """overlay + memory snapshot → zfs snapshot → blockcommit --active + pivot → metadata delete; later:
    destroy → zfs rollback → new token → restore from the memory file → counter continues at max + 1."""
    import libvirt

    vm, disk = shared_vm, shared_vm.disk
    dom = vm.dom
    lab.wait_counter_advances(vm, by=5)
    overlay = vm.workdir / "overlay-vda.qcow2"   # outside the snapshotted dataset
    memfile = vm.workdir / "cycle.mem"
    snap_xml = f"""<domainsnapshot><name>cycle</name>
      <memory snapshot='external' file='{memfile}'/>
      <disks>
        <disk name='{disk.target}' snapshot='external'><driver type='qcow2'/><source file='{overlay}'/></disk>
        <disk name='{vm.token_target}' snapshot='no'/>
      </disks></domainsnapshot>"""
    snap = dom.snapshotCreateXML(snap_xml, 0)   # guest paused while RAM is saved, disk switched to the overlay
    assert dom.isActive() and overlay.exists() and memfile.stat().st_size > 0
    at_snapshot = lab.read_max_counter(disk.path)  # the base file is frozen now
    zsnap = lab.snapshot(disk.dataset, "cycle")
    assert lab.snapshot_max_counter(zsnap, disk.relpath) == at_snapshot

    dom.blockCommit(disk.target, None, None, 0, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)
    _wait_block_job_ready(dom, disk.target)
    dom.blockJobAbort(disk.target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
    deadline = time.monotonic() + 30
    while str(overlay) in dom.XMLDesc(0) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert str(overlay) not in dom.XMLDesc(0), "pivot did not return the guest to its base disk"
    snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    overlay.unlink()
    assert dom.snapshotNum(0) == 0

    # the guest keeps writing to its base file on the dataset
    lab.wait_counter_advances(vm, by=20, start=at_snapshot)
    assert vm.max_counter() >= at_snapshot + 20

    # restore: stop, roll the dataset back, change the token, resume from the memory file
    dom.destroy()
    lab.zfs("rollback", zsnap)
    assert lab.read_max_counter(disk.path) == at_snapshot
    lab.write_token(vm, "restored")
    vm.dom.connect().restoreFlags(str(memfile), None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
    assert vm.dom.isActive()
    assert str(disk.path) in vm.dom.XMLDesc(0)
    lab.wait_counter_advances(vm, by=10, start=at_snapshot, timeout=30)
    rewritten, first_new = lab.resume_evidence(vm, at_snapshot, "restored")
    assert not rewritten, f"RAM older than the disk: records {rewritten[:5]} rewritten after restore"
    assert first_new == at_snapshot + 1, f"counter resumed at {first_new}, snapshot max was {at_snapshot}"
    assert any(tok == "restored" for s, tok in vm.records().values() if s > at_snapshot)


def test_qcow2_disk_counter_readable_while_running(lab, vm_factory):
    vm = vm_factory(fmt="qcow2")
    assert vm.disk.path.suffix == ".qcow2"
    before, after = lab.wait_counter_advances(vm, by=5)
    assert after > before


def test_faketime_makes_old_snapshots(lab, dataset):
    now = int(lab.zfs("get", "-H", "-p", "-o", "value", "creation", dataset.name))
    with lab.faketime("-10d"):
        snap = lab.snapshot(dataset, "old")
    fresh = lab.snapshot(dataset, "new")
    old_c = int(lab.zfs("get", "-H", "-p", "-o", "value", "creation", snap))
    new_c = int(lab.zfs("get", "-H", "-p", "-o", "value", "creation", fresh))
    assert abs((now - old_c) - 10 * 86400) < 120
    assert abs(new_c - now) < 120


def test_agent_guest_freezes_its_filesystem(lab, agent_vm):
    dom = agent_vm.dom
    deadline = time.monotonic() + 60
    while True:
        try:
            frozen = dom.fsFreeze()
            break
        except Exception:  # the agent needs a moment after boot
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    try:
        assert frozen == 1  # the ext4 disk mounted at /mnt
    finally:
        assert dom.fsThaw() == 1
    lab.wait_counter_advances(agent_vm, by=5)


def _dirty_rate_mib_s(dom) -> int:
    """The guest's memory dirty rate as QEMU measures it (libvirt's domdirtyrate-calc over 1 s)."""
    import libvirt

    dom.startDirtyRateCalc(1, 0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stats = dict(dom.connect().domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_DIRTYRATE)[0][1])
        if stats.get("dirtyrate.calc_status") == 2:  # measured
            return stats["dirtyrate.megabytes_per_second"]
        time.sleep(0.2)
    raise AssertionError(f"no dirty rate measured: {stats}")


def test_busy_guest_dirties_its_memory_and_keeps_counting(lab, vm_factory, shared_vm):
    """dirty_mib=N (bench/pause.py's busy guest): a tmpfs file copied over and over besides the counter."""
    idle = shared_vm  # a plain counter guest: only its records dirty memory (MiB/s, whatever its size)
    busy = vm_factory(memory_mib=256, dirty_mib=16)
    assert "dirtying 16 MiB of RAM continuously" in busy.console()
    assert "dirtying" not in idle.console()
    lab.wait_counter_advances(busy, by=10)  # the counter and its token still work
    quiet, dirty = _dirty_rate_mib_s(idle.dom), _dirty_rate_mib_s(busy.dom)
    assert dirty > 4 * quiet + 1, f"busy guest dirties {dirty} MiB/s, idle one {quiet} MiB/s"
