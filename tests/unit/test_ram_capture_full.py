"""overlay_dir filling up during the RAM capture (drill, session 19). It had room when checked (guest memory x 1.1),
then something else filled it, or a live capture of a busy guest rewrote pages: libvirt's write fails with ENOSPC
(NoSpace) and undoes the capture. The cycle failed — no snapshot at all, though `on_memory_failure = "disk-only"`
(the default) says a RAM dump that cannot be written makes a disk-only snapshot with a warning (SPEC). Now the disks
are held again without the RAM: disk-only with a warning, or, with "fail", the cycle fails with that reason. After a
staging folder that filled up first, the RAM file goes to overlay_dir once more, then disk-only."""
from __future__ import annotations

import pytest

from fakehost import make_host
from test_staging import GIB, area

from vmsnapd.hvtypes import RUNNING, NoSpace

SNAP = "tank/web@autosnap_2026-11-29_01:00:00_hourly"
VERB = {"overlay": "snapshot_external", "pause": "snapshot_manual"}


@pytest.mark.parametrize("method", ["overlay", "pause"])
def test_overlay_dir_full_during_the_capture_gives_a_disk_only_snapshot(tmp_path, method):
    host = make_host(tmp_path, policy={"method": method, "quiesce": "off"})
    host.hv.fail(VERB[method], NoSpace("snapshot of web: Unable to write .mem: No space left on device"))

    outcome = host.cycle()

    assert outcome.ok, outcome.error
    assert any("filled up during the RAM capture" in w and "disk-only" in w for w in outcome.warnings), \
        outcome.warnings
    assert host.zfs.snapshots == [SNAP] and host.dumps() == []
    assert host.records() == [] and host.overlay_files() == []
    assert host.hv.domains["web"].state == RUNNING


def test_with_on_memory_failure_fail_the_cycle_fails_saying_why(tmp_path):
    host = make_host(tmp_path, policy={"on_memory_failure": "fail", "quiesce": "off"})
    host.hv.fail("snapshot_external", NoSpace("snapshot of web: No space left on device"))

    outcome = host.cycle()

    assert not outcome.ok and "filled up during the RAM capture" in outcome.error, outcome.error
    assert 'on_memory_failure = "fail"' in outcome.error
    assert host.zfs.snapshots == [] and host.records() == [] and host.overlay_files() == []
    assert len(host.hv.verbs("snapshot_external")) == 1
    assert host.hv.domains["web"].state == RUNNING


def test_staging_then_overlay_dir_full_ends_disk_only(tmp_path):
    host = make_host(tmp_path, policy={"quiesce": "off"})
    full = NoSpace("snapshot of web: No space left on device")
    host.hv.fail("snapshot_external", full, full)

    outcome = host.cycle(staging=area(tmp_path, free=GIB))

    assert outcome.ok, outcome.error
    staged, in_overlay_dir, without_ram = host.hv.verbs("snapshot_external")
    assert str(tmp_path / "staging") in str(staged) and str(host.overlay_dir / host.memory_name()) in in_overlay_dir
    assert host.memory_name() not in str(without_ram)
    assert host.zfs.snapshots == [SNAP] and host.dumps() == []
    assert host.records() == [] and host.overlay_files() == []


def test_no_space_without_a_ram_file_fails_the_cycle(tmp_path):
    """Disk-only already (memory = false): the full file system is not the RAM's, nothing to leave out."""
    host = make_host(tmp_path, policy={"memory": False, "quiesce": "off"})
    host.hv.fail("snapshot_external", NoSpace("snapshot of web: No space left on device"))

    outcome = host.cycle()

    assert not outcome.ok and "No space left" in outcome.error
    assert len(host.hv.verbs("snapshot_external")) == 1
    assert host.zfs.snapshots == [] and host.records() == [] and host.overlay_files() == []
