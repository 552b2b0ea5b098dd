"""The overlay method's overlays are made by vmsnapd before the guest is touched, and libvirt is asked to reuse them
(docs/how-it-works.md, "Pre-created overlays"): recorded in the journal before they exist, deleted when the freeze
fails, deleted by `recover` after a crash, never made over a file that is there already. Against the in-memory host
of fakehost.py; the lab proves the same with real libvirt (tests/integration/test_cycle.py, test_cycle_faults.py)."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import vmsnapd.holdstill as holdstill
from fakehost import make_host
from vmsnapd.hvtypes import RUNNING, HypervisorError


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    monkeypatch.setattr(holdstill, "COMMIT_RETRY_DELAY_S", 0.0)
    monkeypatch.setattr("os.fsync", lambda fd: None)


class Killed(BaseException):
    """vmsnapd killed at this point (kill -9): nothing after it runs."""


def test_overlays_are_recorded_then_made_then_reused_by_libvirt(tmp_path):
    host = make_host(tmp_path, disks=("vda", "vdb"), policy={"quiesce": "off"})
    seen = []
    host.hv.fail("create_overlay", lambda: seen.append([(r.state, [o.overlay_path for o in r.overlays])
                                                        for r in host.records()]))

    outcome = host.cycle()

    assert outcome.ok, outcome.error
    paths = [str(host.overlay_dir / host.overlay_name(t)) for t in ("vda", "vdb")]
    assert seen == [[("freezing", paths)]]  # the record names both before the first file exists
    made = host.hv.verbs("create_overlay", "snapshot_external")
    assert [c[0] for c in made] == ["create_overlay", "create_overlay", "snapshot_external"]
    assert [(c[1], c[3]) for c in made[:2]] == [(p, "raw") for p in paths]
    assert [c[2] for c in made[:2]] == [host.hv.domains["web"].live[t] for t in ("vda", "vdb")]  # the bases
    assert host.overlay_files() == [] and host.records() == []


def test_an_overlay_that_cannot_be_made_fails_the_cycle_and_leaves_nothing(tmp_path):
    host = make_host(tmp_path, disks=("vda", "vdb"), policy={"quiesce": "off"})
    host.hv.fail("create_overlay", None, HypervisorError("cannot create overlay: No space left on device"))

    outcome = host.cycle()

    assert not outcome.ok and "cannot create overlay" in outcome.error
    assert host.hv.verbs("snapshot_external") == []  # the guest was never touched
    assert host.overlay_files() == [] and host.records() == [] and host.zfs.snapshots == []
    assert host.hv.domains["web"].state == RUNNING


def test_a_freeze_failing_after_the_overlays_were_made_deletes_them(tmp_path):
    host = make_host(tmp_path, policy={"quiesce": "off"})
    host.hv.fail("snapshot_external", HypervisorError("snapshot of web: internal error"))

    outcome = host.cycle()

    assert not outcome.ok
    assert len(host.hv.verbs("create_overlay")) == 1
    assert host.overlay_files() == [] and host.records() == []


def test_recover_deletes_overlays_made_before_a_crash(tmp_path):
    """Killed between making the overlay and asking libvirt: the record names the file, recover deletes it."""
    host = make_host(tmp_path, policy={"quiesce": "off"})
    host.hv.fail("snapshot_external", Killed())
    with pytest.raises(Killed):
        host.cycle()
    [record] = host.records()
    assert record.state == "freezing" and host.overlay_files() == [host.overlay_name()]

    report = host.recover()

    assert report.errors == [], report.errors
    assert any("deleted" in a and host.overlay_name() in a for a in report.actions), report.actions
    assert host.overlay_files() == [] and host.records() == []
    assert host.hv.verbs("commit_active") == []  # nothing ran on it


def test_a_file_where_an_overlay_goes_is_left_alone_and_nothing_is_touched(tmp_path):
    host = make_host(tmp_path, policy={"quiesce": "off"})
    host.overlay_dir.mkdir(mode=0o711)
    there = host.overlay_dir / host.overlay_name()
    there.write_text("not this cycle's")

    outcome = host.cycle()

    assert not outcome.ok and "exists already" in outcome.error
    assert there.read_text() == "not this cycle's"
    assert host.hv.verbs("create_overlay", "snapshot_external") == [] and host.records() == []


@pytest.mark.parametrize("planted", ["file", "symlink"])
def test_a_file_appearing_where_an_overlay_goes_after_the_check_is_left_alone(tmp_path, planted):
    """The check before the record and the O_EXCL create are two steps: whatever appears between them (another
    process's file, a symlink) makes the create fail — and the clean-up of that failure must not delete it."""
    host = make_host(tmp_path, disks=("vda", "vdb"), policy={"quiesce": "off"})
    first = host.overlay_dir / host.overlay_name("vda")
    there = host.overlay_dir / host.overlay_name("vdb")
    victim = tmp_path / "victim"
    victim.write_text("someone's")

    def plant():
        if planted == "file":
            there.write_text("not this cycle's")
        else:
            there.symlink_to(victim)

    host.hv.fail("create_overlay", None, plant)  # the second disk's overlay path is taken meanwhile

    outcome = host.cycle()

    assert not outcome.ok and "not this cycle's overlay" in outcome.error, outcome.error
    assert os.path.lexists(there) and victim.read_text() == "someone's"
    if planted == "file":
        assert there.read_text() == "not this cycle's"
    assert not first.exists()  # the one it made is deleted
    assert host.hv.verbs("snapshot_external") == [] and host.records() == []


def test_dry_run_makes_no_overlay(tmp_path):
    host = make_host(tmp_path, policy={"quiesce": "off"})

    outcome = host.cycle(dry_run=True)

    assert outcome.ok, outcome.error
    assert [c[0] for c in host.hv.verbs("create_overlay", "snapshot_external")] == ["create_overlay",
                                                                                     "snapshot_external"]
    assert not host.overlay_dir.exists() and host.records() == []


def test_an_overlay_that_cannot_be_deleted_after_a_failed_freeze_stays_in_the_record_for_recover(
        tmp_path, monkeypatch, caplog):
    """A file system that refuses the clean-up's unlink (read-only since, failing): a warning naming the file, no
    traceback, and the journal keeps the overlay so that `recover` deletes it once it can (the lab proves a
    read-only and a full overlay_dir: tests/integration/test_overlay_dir_faults.py)."""
    host = make_host(tmp_path, policy={"quiesce": "off"})
    host.hv.fail("snapshot_external", HypervisorError("snapshot of web: internal error"))
    real_unlink = Path.unlink

    def refuse(path, missing_ok=False):
        if path.parent == host.overlay_dir and path.suffix == ".qcow2":
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse)
    outcome = host.cycle()

    assert not outcome.ok and "internal error" in outcome.error, outcome.error
    assert "unexpected error" not in caplog.text, caplog.text
    overlay = str(host.overlay_dir / host.overlay_name())
    assert any(f"cannot delete {overlay}" in w for w in outcome.warnings), outcome.warnings
    assert host.overlay_files() == [host.overlay_name()]
    [record] = host.records()
    assert [o.overlay_path for o in record.overlays] == [overlay]

    refused = host.recover()  # the file system still refuses: an error, the record kept for the next try

    assert any(f"cannot delete {overlay}" in e for e in refused.errors), refused
    assert host.overlay_files() == [host.overlay_name()] and len(host.records()) == 1
    monkeypatch.setattr(Path, "unlink", real_unlink)

    report = host.recover()

    assert host.overlay_files() == [] and host.records() == [], report
    assert host.hv.domains["web"].state == RUNNING



def test_a_ram_file_that_cannot_be_deleted_after_its_dump_failed_stays_in_the_record_for_recover(tmp_path,
                                                                                                  monkeypatch):
    """The RAM store refuses the dump (the snapshot stays, disk-only) and the fresh RAM file cannot be deleted
    either: the cycle succeeds with both warnings, and its record stays naming the file, which `recover` deletes
    once it can (before: the record was finished and the file left behind, named by no record)."""
    host = make_host(tmp_path, policy={"quiesce": "off"}, ram_failures=1)
    real_unlink = Path.unlink

    def refuse(path, missing_ok=False):
        if path.name == host.memory_name():
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse)
    outcome = host.cycle()

    ram_file = str(host.overlay_dir / host.memory_name())
    assert outcome.ok and host.zfs.snapshots and host.dumps() == [], outcome.error
    assert any(f"cannot delete {ram_file}" in w for w in outcome.warnings), outcome.warnings
    [record] = host.records()
    assert record.ram_file == ram_file and Path(ram_file).exists()
    monkeypatch.setattr(Path, "unlink", real_unlink)

    report = host.recover()

    assert report.errors == [] and not Path(ram_file).exists() and host.records() == [], report
