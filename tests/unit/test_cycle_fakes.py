"""Every fault path of a cycle, and `recover` on the journal it leaves, in milliseconds: the cycle runs against the
in-memory host of fakehost.py (libvirt, zfs, a journal and a RAM store that fail on cue). The same paths against
real libvirt and ZFS: tests/integration/test_cycle.py, test_cycle_faults.py, test_recover_ownership.py."""
from __future__ import annotations

import pytest

import vmsnapd.holdstill as holdstill
from fakehost import make_host
from vmsnapd.hvtypes import (PAUSED, RUNNING, SHUTOFF, AgentUnavailable, BlockJobFailed, DomainNotFound,
                             HypervisorError)
from vmsnapd.zfs import ZfsError

SNAP = "tank/web@autosnap_2026-11-29_01:00:00_hourly"
OVERLAY_FLOW = ["started", "xml_saved", "quiescing", "quiesced", "freezing", "frozen", "snapshotted", "committed",
                "unfrozen", "dump_kept", "done"]


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    """No waiting between commit attempts, and no fsync (durability is test_journal.py's and test_files.py's)."""
    monkeypatch.setattr(holdstill, "COMMIT_RETRY_DELAY_S", 0.0)
    monkeypatch.setattr("os.fsync", lambda fd: None)


def assert_safe(host, *, state=RUNNING):
    """What every cycle and every recovery must end with: the guest on its base files (live and persistent),
    in `state`, file systems thawed, overlay_dir empty (no overlay, no stray RAM file)."""
    dom = host.hv.domains["web"]
    assert all(str(host.overlay_dir) not in p for p in dom.live.values()), dom.live
    assert all(str(host.overlay_dir) not in p for p in dom.persistent.values()), dom.persistent
    assert dom.state == state
    assert not dom.fs_frozen
    assert host.overlay_files() == []


def test_overlay_cycle_walks_every_state_and_leaves_nothing_behind(tmp_path):
    host = make_host(tmp_path)

    outcome = host.cycle()

    assert outcome.ok, outcome.error
    assert outcome.snapshots == [SNAP] and host.zfs.snapshots == [SNAP]
    assert host.journal.states == OVERLAY_FLOW
    assert host.records() == []
    assert len([d for d in host.dumps() if ".mem" in d]) == 1
    assert host.hv.verbs("fs_freeze", "fs_thaw", "snapshot_external", "commit_active") == [
        ("fs_freeze", "web"), ("snapshot_external", "web", (("vda", str(host.overlay_dir / host.overlay_name())),),
                               str(host.overlay_dir / host.memory_name()), ()),
        ("fs_thaw", "web"), ("commit_active", "web", "vda")]
    assert_safe(host)


@pytest.mark.parametrize("memory, first_state, hold, states", [
    (True, RUNNING, "snapshot_manual", ["freezing", "frozen", "snapshotted", "resumed", "unfrozen", "dump_kept"]),
    (False, RUNNING, "suspend", ["freezing", "frozen", "snapshotted", "resumed", "unfrozen", "done"]),
    (True, PAUSED, "snapshot_manual", ["freezing", "frozen", "snapshotted", "unfrozen", "dump_kept"]),
    (False, PAUSED, None, ["freezing", "frozen", "snapshotted", "unfrozen", "done"]),
])
def test_pause_method(tmp_path, memory, first_state, hold, states):
    """A running guest paused by the cycle is resumed; a guest that was paused already stays paused."""
    host = make_host(tmp_path, state=first_state, policy={"method": "pause", "memory": memory, "quiesce": "off"})

    outcome = host.cycle()

    assert outcome.ok, outcome.error
    assert host.zfs.snapshots == [SNAP]
    flow = host.journal.states
    assert flow[flow.index("freezing"):flow.index(states[-1]) + 1] == states
    assert [c[0] for c in host.hv.verbs("snapshot_manual", "suspend")] == ([hold] if hold else [])
    assert len(host.hv.verbs("resume")) == (first_state == RUNNING)
    assert host.hv.verbs("snapshot_external", "commit_active") == []
    assert (len(host.dumps()) == 2) == memory
    assert_safe(host, state=first_state)


@pytest.mark.parametrize("memory, hold", [(True, "snapshot_manual"), (False, "suspend")])
def test_pause_method_thaws_once_the_guest_runs_again(tmp_path, memory, hold):
    """libvirt refuses the agent's thaw while the guest is paused (tests/integration/test_cycle_holds.py): the
    file systems frozen before the pause are thawed after the resume, never left frozen."""
    host = make_host(tmp_path, policy={"method": "pause", "memory": memory, "quiesce": "required"})

    outcome = host.cycle()

    assert outcome.ok and outcome.warnings == [], (outcome.error, outcome.warnings)
    assert [c[0] for c in host.hv.verbs("fs_freeze", hold, "resume", "fs_thaw")] == [
        "fs_freeze", hold, "resume", "fs_thaw"]
    assert host.records() == []
    assert_safe(host)


def test_shut_off_vm_gets_a_plain_snapshot(tmp_path):
    host = make_host(tmp_path, state=SHUTOFF)

    outcome = host.cycle()

    assert outcome.ok and host.zfs.snapshots == [SNAP]
    assert host.journal.states == ["started", "xml_saved", "snapshotted", "done"]
    assert host.hv.verbs("fs_freeze", "snapshot_external", "snapshot_manual", "suspend") == []
    assert host.dumps() == []
    assert_safe(host, state=SHUTOFF)


def test_plain_dataset(tmp_path):
    host = make_host(tmp_path, domain=None)

    outcome = host.cycle()

    assert outcome.ok and host.zfs.snapshots == [SNAP]
    assert host.journal.states == ["started", "snapshotted", "done"]


# -- commit back ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("failures", [1, 2])
def test_commit_retried_until_it_works(tmp_path, failures):
    host = make_host(tmp_path)
    host.hv.fail("commit_active", *[BlockJobFailed("blockcommit web vda: job failed")] * failures)

    outcome = host.cycle()

    assert outcome.ok, outcome.error
    assert len(host.hv.verbs("commit_active")) == failures + 1
    assert host.records() == []
    assert_safe(host)


def test_commit_failing_three_times_leaves_the_vm_on_its_overlay_and_recover_finishes(tmp_path):
    host = make_host(tmp_path)
    host.hv.fail("commit_active", *[BlockJobFailed("blockcommit web vda: job failed")] * 3)

    outcome = host.cycle()

    assert not outcome.ok and "CRITICAL" in outcome.error and "still runs on overlay" in outcome.error
    assert "vmsnapd recover" in outcome.error
    assert outcome.snapshots == [SNAP]  # the snapshot stands, and its RAM dump matches it: both kept
    assert len(host.dumps()) == 2
    assert len(host.hv.verbs("commit_active")) == 3
    dom = host.hv.domains["web"]
    assert str(host.overlay_dir) in dom.live["vda"] and dom.state == RUNNING  # safe, on its overlay
    [record] = host.records()
    assert record.state == "failed" and [o.target for o in record.overlays] == ["vda"]
    assert host.journal.states[-3:] == ["commit_failed", "dump_kept", "failed"]

    report = host.recover()

    assert report.errors == [], report.errors
    assert host.hv.verbs("commit_active")[-1] == ("commit_active", "web", "vda")
    assert host.records() == []
    assert_safe(host)


def test_every_disk_is_tried_and_only_the_one_still_on_its_overlay_is_recorded(tmp_path):
    host = make_host(tmp_path, disks=("vda", "vdb"))
    failing = BlockJobFailed("blockcommit web vda: job failed")
    host.hv.fail("commit_active", failing, failing, failing)  # every attempt for vda; vdb (tried after) goes back

    outcome = host.cycle()

    assert not outcome.ok and "vda still runs on overlay" in outcome.error and "vdb" not in outcome.error
    [record] = host.records()
    assert [o.target for o in record.overlays] == ["vda"]
    assert host.overlay_files() == [host.overlay_name("vda")]
    assert host.recover().errors == []
    assert host.records() == []
    assert_safe(host)


def test_recover_keeps_the_record_while_the_commit_still_fails(tmp_path):
    host = make_host(tmp_path)
    host.hv.fail("commit_active", *[BlockJobFailed("blockcommit web vda: job failed")] * 4)
    host.cycle()

    report = host.recover()

    assert report.errors and "still on overlay" in report.errors[0]
    assert len(host.records()) == 1
    assert len(host.overlay_files()) == 1  # never deleted while the domain runs on it
    assert host.recover().errors == []
    assert host.records() == []
    assert_safe(host)


# -- the domain goes away ------------------------------------------------------------------------------------------

def test_a_vm_stopped_by_the_pre_snapshot_hook_gets_a_plain_snapshot_of_its_disks_at_rest(tmp_path):
    """Shut off by the pre_snapshot hook (a cold backup: shut down before, started after; or an admin) after the
    cycle looked at it: snapshotted as the stopped VM it is now — no freeze, no RAM, no overlay."""
    host = make_host(tmp_path, policy={"hooks": {"pre_snapshot": ["/bin/true"]}})
    host.hv.fail("state", None, lambda: host.hv.shut_off("web"))

    outcome = host.cycle()

    assert outcome.ok, outcome.error
    assert len(host.zfs.snapshots) == 1 and host.records() == [] and host.dumps() == []
    assert host.hv.verbs("snapshot_external", "snapshot_manual", "fs_freeze", "suspend") == []
    assert_safe(host, state=SHUTOFF)


def test_a_vm_undefined_by_the_pre_snapshot_hook_fails_the_cycle_with_nothing_touched(tmp_path):
    host = make_host(tmp_path, policy={"hooks": {"pre_snapshot": ["/bin/true"]}})
    host.hv.fail("state", None, lambda: host.hv.vanish("web"))

    outcome = host.cycle()

    assert not outcome.ok and "no longer running" in outcome.error
    assert host.zfs.snapshots == [] and host.records() == [] and host.dumps() == []


@pytest.mark.parametrize("how", ["shut_off", "vanish"])
def test_domain_gone_during_the_freeze(tmp_path, how):
    host = make_host(tmp_path, policy={"quiesce": "off"})

    def gone():
        getattr(host.hv, how)("web")
        raise HypervisorError("snapshot of web: domain is not running")

    host.hv.fail("snapshot_external", gone)

    outcome = host.cycle()

    assert not outcome.ok and "no longer running" in outcome.error
    assert host.zfs.snapshots == [] and host.records() == [] and host.overlay_files() == []
    if how == "shut_off":
        assert_safe(host, state=SHUTOFF)


def test_domain_shut_off_while_on_its_overlay_is_committed_offline(tmp_path):
    host = make_host(tmp_path)
    host.zfs.then("snapshot", lambda: host.hv.shut_off("web"))

    outcome = host.cycle()

    assert outcome.ok, outcome.error
    assert any("shut off during the cycle" in w for w in outcome.warnings), outcome.warnings
    assert host.hv.verbs("commit_offline")[0][:3] == ("commit_offline", "web", "vda")
    assert host.records() == []
    assert_safe(host, state=SHUTOFF)


def test_domain_vanished_while_on_its_overlay_is_merged_and_its_dump_kept(tmp_path):
    host = make_host(tmp_path)
    host.zfs.then("snapshot", lambda: host.hv.vanish("web"))

    outcome = host.cycle()

    assert outcome.ok, outcome.error
    assert any("vanished during the cycle" in w for w in outcome.warnings), outcome.warnings
    assert [c[0] for c in host.hv.verbs("commit_overlay_file")] == ["commit_overlay_file"]
    assert host.records() == [] and host.overlay_files() == []
    assert len(host.dumps()) == 2  # the dump matches the snapshot: kept (with the XML read at the start)


def test_domain_vanished_during_the_commit(tmp_path):
    host = make_host(tmp_path)
    host.hv.fail("commit_active", lambda: host.hv.vanish("web"))

    outcome = host.cycle()

    assert outcome.ok, outcome.error
    assert [c[0] for c in host.hv.verbs("commit_active", "commit_overlay_file")] == [
        "commit_active", "commit_overlay_file"]
    assert host.records() == [] and host.overlay_files() == []


def test_paused_guest_gone_before_the_resume(tmp_path):
    host = make_host(tmp_path, policy={"method": "pause", "quiesce": "off"})
    host.zfs.then("snapshot", lambda: host.hv.vanish("web"))

    outcome = host.cycle()

    assert outcome.ok, outcome.error
    assert any("nothing to resume" in w for w in outcome.warnings), outcome.warnings
    assert host.records() == [] and host.overlay_files() == []


PAUSE_FLOW = ["started", "xml_saved", "quiescing", "quiesced", "freezing", "frozen", "snapshotted", "resumed",
              "unfrozen", "dump_kept", "done"]


@pytest.mark.parametrize("how", ["shut_off", "vanish"])
@pytest.mark.parametrize("method, state", [("overlay", s) for s in OVERLAY_FLOW[1:]]
                         + [("pause", s) for s in PAUSE_FLOW[1:]])
def test_domain_gone_right_after_any_state(tmp_path, method, state, how):
    """Whenever the domain is shut off or undefined, the cycle ends (success or a clear failure) without leaving an
    overlay or a record that `recover` cannot close; a domain still defined ends on its base files."""
    host = make_host(tmp_path, policy={"method": method})
    host.journal.on_state[state] = lambda: getattr(host.hv, how)("web")

    outcome = host.cycle()

    assert outcome.ok or outcome.error
    assert host.recover().errors == []
    assert host.records() == [] and host.overlay_files() == []
    if how == "shut_off":
        assert_safe(host, state=SHUTOFF)


# -- the freeze fails half-way -------------------------------------------------------------------------------------

def test_external_snapshot_that_failed_after_moving_a_disk_is_undone(tmp_path):
    """libvirt's snapshot is atomic; should it ever fail after all with a disk on its overlay, the cycle asks
    libvirt what really happened and commits that disk back."""
    host = make_host(tmp_path, disks=("vda", "vdb"), policy={"quiesce": "off"})
    dom = host.hv.domains["web"]

    def half():
        overlay = str(host.overlay_dir / host.overlay_name("vda"))
        with open(overlay, "wb") as f:
            f.write(b"overlay")
        host.hv.backing[overlay] = dom.live["vda"]
        dom.live["vda"] = dom.persistent["vda"] = overlay
        raise HypervisorError("snapshot of web: I/O error on vdb")

    host.hv.fail("snapshot_external", half)

    outcome = host.cycle()

    assert not outcome.ok and "I/O error" in outcome.error
    assert host.hv.verbs("commit_active") == [("commit_active", "web", "vda")]
    assert host.zfs.snapshots == [] and host.records() == []
    assert_safe(host)


@pytest.mark.parametrize("answers_in_time", [True, False])
def test_a_freeze_cut_off_by_a_libvirtd_restart_waits_for_it_to_settle_the_guest(tmp_path, monkeypatch,
                                                                                  answers_in_time):
    """libvirtd restarts while the external snapshot runs (lab: a 2-VM pass whose other cycle restarted it): the
    call fails with its connection, but libvirt had switched the guest to its overlay. The cycle waits for libvirtd
    to answer and commits it back itself (before: "cannot be inspected", the guest left on its overlay until the
    next pass's `recover`); a libvirtd that stays away still leaves the record to `recover`."""
    from vmsnapd.hvtypes import HypervisorUnavailable

    naps: list[float] = []
    monkeypatch.setattr(holdstill.time, "sleep", naps.append)
    monkeypatch.setattr(holdstill, "SETTLE_WAIT_S", 30.0 if answers_in_time else 0.0)
    host = make_host(tmp_path, policy={"quiesce": "off"})
    dom = host.hv.domains["web"]

    def cut_off():
        overlay = str(host.overlay_dir / host.overlay_name("vda"))
        host.hv.backing[overlay] = dom.live["vda"]
        dom.live["vda"] = dom.persistent["vda"] = overlay
        gone = HypervisorUnavailable("cannot connect to qemu:///system: Failed to connect socket")
        host.hv.fail("state", gone, gone, gone)  # restarting: its next three questions find no libvirtd
        raise HypervisorError("snapshot of web: End of file while reading data: Input/output error")

    host.hv.fail("snapshot_external", cut_off)

    outcome = host.cycle()

    assert not outcome.ok and "End of file" in outcome.error and host.zfs.snapshots == []
    if answers_in_time:
        assert naps == [0.25, 0.5, 1.0]
        assert host.hv.verbs("commit_active") == [("commit_active", "web", "vda")]
        assert host.records() == []
        assert_safe(host)
    else:
        assert naps == [] and host.hv.verbs("commit_active") == []
        [record] = host.records()  # recover's to settle
        assert [o.target for o in record.overlays] == ["vda"]
        host.hv.planned.pop("state")  # libvirtd answers again
        assert host.recover().errors == [] and host.records() == []
        assert_safe(host)


def test_manual_snapshot_that_failed_with_the_guest_paused_resumes_it(tmp_path):
    host = make_host(tmp_path, policy={"method": "pause", "quiesce": "off"})

    def half():
        host.hv.domains["web"].state = PAUSED
        raise HypervisorError("snapshot of web: cannot write memory file")

    host.hv.fail("snapshot_manual", half)

    outcome = host.cycle()

    assert not outcome.ok
    assert host.hv.verbs("resume") == [("resume", "web")]
    assert host.zfs.snapshots == [] and host.records() == []
    assert_safe(host)


def test_fs_freeze_failing_falls_back_to_a_crash_consistent_snapshot(tmp_path):
    host = make_host(tmp_path)
    host.hv.fail("fs_freeze", AgentUnavailable("fsfreeze web: Guest agent is not responding"))

    outcome = host.cycle()

    assert outcome.ok
    assert any("fsfreeze failed" in w for w in outcome.warnings), outcome.warnings
    assert host.hv.verbs("fs_thaw") == []
    assert_safe(host)


@pytest.mark.parametrize("agent, warned", [("none", False), ("silent", True)])
def test_quiesce_auto_without_an_answering_agent(tmp_path, agent, warned):
    host = make_host(tmp_path, agent=agent)

    outcome = host.cycle()

    assert outcome.ok
    assert any("does not answer" in w for w in outcome.warnings) == warned
    assert host.hv.verbs("fs_freeze") == []


def test_quiesce_required_without_an_agent_touches_nothing(tmp_path):
    host = make_host(tmp_path, agent="silent", policy={"quiesce": "required"})

    outcome = host.cycle()

    assert not outcome.ok and "required" in outcome.error
    assert host.hv.verbs("snapshot_external", "fs_freeze") == [] and host.zfs.snapshots == []
    assert host.records() == []


def test_thaw_follows_a_freeze_that_failed(tmp_path):
    host = make_host(tmp_path)
    host.hv.fail("snapshot_external", HypervisorError("snapshot of web: internal error"))

    outcome = host.cycle()

    assert not outcome.ok
    assert host.hv.verbs("fs_freeze", "fs_thaw") == [("fs_freeze", "web"), ("fs_thaw", "web")]
    assert host.records() == []
    assert_safe(host)


# -- a guest paused since its last RAM capture ---------------------------------------------------------------------

@pytest.mark.parametrize("method", ["overlay", "pause"])
def test_a_guest_paused_since_its_last_capture_gets_disk_only_snapshots(tmp_path, method):
    """QEMU refuses a second RAM capture until the guest runs (its postmigrate state; seen on the lab): the next
    cycles of a guest that stays paused take disk-only snapshots (the first capture's dump still holds its RAM)
    instead of failing every pass with no snapshot at all."""
    from test_staging import GIB, area

    from vmsnapd.staging import STAGING_FACTOR, Claim

    host = make_host(tmp_path, state=PAUSED, policy={"method": method, "quiesce": "off"})
    assert host.cycle(("hourly",)).ok and len(host.dumps()) == 2  # the RAM file and its manifest
    staging = area(tmp_path, free=GIB)

    second = host.cycle(("daily",), staging=staging)

    assert second.ok, second.error
    assert any("has stayed paused since its RAM was last captured" in w and "disk-only" in w
               for w in second.warnings), second.warnings
    assert len(host.zfs.snapshots) == 2 and len(host.dumps()) == 2
    assert host.hv.domains["web"].state == PAUSED and host.hv.verbs("resume") == []
    assert host.records() == [] and host.overlay_files() == [] and list((tmp_path / "staging").iterdir()) == []
    assert isinstance(staging.claim(int(GIB / STAGING_FACTOR)), Claim)  # the room it was promised is free again
    host.hv.resume("web")
    host.cycle(("monthly",))
    assert host.hv.verbs("snapshot_external", "snapshot_manual")[-1][3]  # ran meanwhile: its RAM captured again


def test_a_guest_paused_since_its_last_capture_fails_the_cycle_when_memory_must_not_fail(tmp_path):
    host = make_host(tmp_path, state=PAUSED, policy={"quiesce": "off", "on_memory_failure": "fail"})
    assert host.cycle(("hourly",)).ok

    second = host.cycle(("daily",))

    assert not second.ok and 'has stayed paused since its RAM was last captured' in second.error
    assert '(on_memory_failure = "fail")' in second.error
    assert len(host.zfs.snapshots) == 1 and host.hv.domains["web"].state == PAUSED
    assert host.records() == [] and host.overlay_files() == []


# -- zfs fails -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["overlay", "pause"])
def test_failed_zfs_snapshot_still_brings_the_vm_back(tmp_path, method):
    host = make_host(tmp_path, policy={"method": method, "quiesce": "off"})
    host.zfs.fail("snapshot", ZfsError("tank/web@x: out of space", "tank/web"))

    outcome = host.cycle()

    assert not outcome.ok and "out of space" in outcome.error
    assert outcome.snapshots == [] and host.dumps() == []
    assert host.records() == []
    assert_safe(host)


# -- the RAM store fails -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("on_failure, ok", [("disk-only", True), ("fail", False)])
def test_ram_dump_not_stored_after_the_snapshot(tmp_path, on_failure, ok):
    host = make_host(tmp_path, policy={"on_memory_failure": on_failure}, ram_failures=1)

    outcome = host.cycle()

    assert outcome.ok == ok
    assert outcome.snapshots == [SNAP]  # a valid disk-only restore point either way
    assert host.dumps() == [] and host.records() == []
    assert_safe(host)


# -- the journal fails ---------------------------------------------------------------------------------------------

def test_journal_unwritable_at_the_start_touches_nothing(tmp_path):
    host = make_host(tmp_path, journal_faults={"fail_begin": True})

    outcome = host.cycle()

    assert not outcome.ok and "journal" in outcome.error
    assert host.hv.verbs("fs_freeze", "snapshot_external") == [] and host.zfs.snapshots == []


@pytest.mark.parametrize("state", ["xml_saved", "quiescing", "quiesced", "freezing", "frozen", "snapshotted",
                                   "committed", "unfrozen", "dump_kept", "done"])
def test_journal_write_failing_at_any_state_leaves_the_vm_safe(tmp_path, state):
    """Whatever write fails, the VM ends on its base and running; what the record still says, recover finishes."""
    host = make_host(tmp_path, journal_faults={"fail_states": (state,)})

    outcome = host.cycle()

    assert not outcome.ok and "journal" in outcome.error, outcome.error
    assert host.hv.domains["web"].state == RUNNING and not host.hv.domains["web"].fs_frozen
    assert str(host.overlay_dir) not in host.hv.domains["web"].live["vda"]
    host.journal.fail_states = set()
    assert host.recover().errors == []
    assert host.records() == []
    assert_safe(host)


def test_journal_record_kept_when_the_failure_cannot_be_recorded(tmp_path):
    host = make_host(tmp_path, journal_faults={"fail_states": ("failed",)})
    host.hv.fail("commit_active", *[BlockJobFailed("blockcommit web vda: job failed")] * 3)

    outcome = host.cycle()

    assert not outcome.ok
    [record] = host.records()
    assert record.state == "dump_kept" and record.overlays  # the last state it could write
    assert host.recover().errors == []
    assert_safe(host)


# -- hooks ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pre, on_failure, ok, snapshots, warning", [
    ("/bin/false", "fail", False, [], None),
    ("/bin/false", "continue", True, [SNAP], "pre_snapshot hook failed"),
    ("/bin/true", "fail", True, [SNAP], None),
])
def test_pre_snapshot_hook(tmp_path, pre, on_failure, ok, snapshots, warning):
    marker = tmp_path / "post-ran"
    host = make_host(tmp_path, policy={"pre_snapshot_failure": on_failure, "hooks": {
        "pre_snapshot": [pre], "post_snapshot": ["/bin/sh", "-c", f'echo "$SANOID_PRE_FAILURE" > {marker}']}})

    outcome = host.cycle()

    assert outcome.ok == ok and host.zfs.snapshots == snapshots
    assert marker.read_text().strip() == ("1" if pre == "/bin/false" else "0")  # post always runs after pre
    assert any(warning in w for w in outcome.warnings) if warning else outcome.warnings == []
    assert host.records() == []
    assert_safe(host)


def test_failing_post_snapshot_hook_is_a_warning(tmp_path):
    host = make_host(tmp_path, policy={"hooks": {"post_snapshot": ["/bin/false"]}})

    outcome = host.cycle()

    assert outcome.ok and any("post_snapshot hook failed" in w for w in outcome.warnings)


# -- dry run -------------------------------------------------------------------------------------------------------

def test_dry_run_writes_nothing(tmp_path):
    host = make_host(tmp_path)

    outcome = host.cycle(dry_run=True)

    assert outcome.ok and outcome.dry_run
    assert host.journal.states == [] and host.records() == []
    assert host.overlay_files() == [] and host.dumps() == []
    assert not (tmp_path / "tank" / "web" / ".vmsnapd").exists()


def test_domain_lookup_failing_at_the_start_fails_alone(tmp_path):
    host = make_host(tmp_path)
    host.hv.fail("state", DomainNotFound("domain web: Domain not found"))

    outcome = host.cycle()

    assert not outcome.ok and host.journal.states == [] and host.zfs.snapshots == []


# -- journal files of earlier versions -----------------------------------------------------------------------------

# Every state the cycle of vmsnapd ≤ this change wrote into its journal files (as plain strings).
STATES_WRITTEN_BEFORE = ["started", "xml_saved", "quiescing", "quiesced", "freezing", "frozen", "snapshotted",
                         "commit_failed", "committed", "resumed", "unfrozen", "dump_kept", "done", "failed"]

OLD_RECORD = """{
 "cycle_id": "web-2026-11-29_01:00:00",
 "domain": "web",
 "datasets": [
  "tank/web"
 ],
 "snapshot_names": [
  "autosnap_2026-11-29_01:00:00_hourly"
 ],
 "stamp": "2026-11-29_01:00:00",
 "method": "overlay",
 "state": "%(state)s",
 "overlays": [
  {
   "target": "vda",
   "overlay_path": "%(overlay)s",
   "base_path": "%(base)s"
  }
 ],
 "ram_file": "%(ram)s",
 "fs_frozen": true,
 "quiesced": false,
 "paused_by_us": false,
 "pause_ms": null,
 "ram_dump": null,
 "pid": 4242,
 "started_at": "2026-11-29T01:00:00.000+00:00",
 "updated_at": "2026-11-29T01:00:01.000+00:00",
 "error": null
}"""


def test_the_state_enum_is_the_vocabulary_of_the_journal_files():
    from vmsnapd.journal import CycleState

    assert [s.value for s in CycleState] == STATES_WRITTEN_BEFORE


@pytest.mark.parametrize("state", STATES_WRITTEN_BEFORE)
def test_a_journal_file_written_before_the_state_enum_is_recovered(tmp_path, state):
    """A record as the previous version wrote it (byte for byte, state a plain string), left by a crash with the
    VM on its overlay and frozen: it loads, and `recover` brings the VM back and closes it."""
    from vmsnapd.journal import cycle_file_name

    host = make_host(tmp_path)
    dom = host.hv.domains["web"]
    base = dom.live["vda"]
    host.overlay_dir.mkdir()
    overlay = str(host.overlay_dir / host.overlay_name())
    ram = str(host.overlay_dir / host.memory_name())
    for path in (overlay, ram):
        with open(path, "wb") as f:
            f.write(b"x")
    host.hv.backing[overlay] = base
    dom.live["vda"] = dom.persistent["vda"] = overlay
    dom.fs_frozen = True
    folder = tmp_path / "state" / "cycles"
    folder.mkdir(parents=True, mode=0o700)
    (folder / cycle_file_name("web-2026-11-29_01:00:00")).write_text(
        OLD_RECORD % {"state": state, "overlay": overlay, "base": base, "ram": ram})

    [record] = host.records()
    assert record.state == state and record.overlays[0].overlay_path == overlay

    report = host.recover()

    assert report.errors == [], report.errors
    assert any(f"was in state {state})" in a for a in report.actions), report.actions
    assert host.hv.verbs("fs_thaw", "commit_active") == [("fs_thaw", "web"), ("commit_active", "web", "vda")]
    assert host.records() == []
    assert_safe(host)


def test_journal_files_keep_writing_the_state_as_a_plain_string(tmp_path):
    import json

    host = make_host(tmp_path, journal_faults={"fail_states": ("snapshotted",)})
    host.hv.fail("commit_active", *[BlockJobFailed("job failed")] * 3)
    host.cycle()
    [path] = (tmp_path / "state" / "cycles").iterdir()
    assert json.loads(path.read_text())["state"] == "failed"


# -- recover on what a cycle left ----------------------------------------------------------------------------------

def test_recover_after_a_crash_while_paused_resumes_the_guest(tmp_path):
    """vmsnapd killed while the pause method held the guest: the record says paused_by_us; recover resumes."""
    host = make_host(tmp_path, policy={"method": "pause", "quiesce": "off"})

    host.cycle_killed_at_zfs_snapshot()
    [record] = host.records()
    assert record.state == "frozen" and record.paused_by_us and record.ram_file
    assert host.hv.domains["web"].state == PAUSED

    report = host.recover()

    assert report.errors == []
    assert host.hv.verbs("resume") == [("resume", "web")]
    assert host.records() == [] and host.overlay_files() == []
    assert_safe(host)


@pytest.mark.parametrize("gone", ["shut_off", "vanish"])
def test_recover_after_a_crash_on_the_overlay_when_the_domain_went_away(tmp_path, gone):
    host = make_host(tmp_path, policy={"quiesce": "off"})

    host.cycle_killed_at_zfs_snapshot()
    getattr(host.hv, gone)("web")

    report = host.recover()

    assert report.errors == [], report.errors
    expected = "commit_offline" if gone == "shut_off" else "commit_overlay_file"
    assert [c[0] for c in host.hv.verbs("commit_offline", "commit_overlay_file")] == [expected]
    assert host.records() == [] and host.overlay_files() == []
    if gone == "shut_off":
        assert_safe(host, state=SHUTOFF)


def test_a_ram_dump_is_never_paired_with_a_snapshot_the_cycle_did_not_take(tmp_path):
    """The cycle's snapshot name exists already (taken at another instant: another tool, another cycle): that
    snapshot does not hold the disks of this cycle's instant, so the RAM dump of this instant must not claim it."""
    host = make_host(tmp_path)
    host.zfs.snapshots.append(SNAP)

    outcome = host.cycle()

    assert outcome.ok, outcome.error
    assert outcome.snapshots == [] and host.zfs.snapshots == [SNAP]
    assert host.dumps() == []
    assert any("already exists" in w for w in outcome.warnings), outcome.warnings
    assert any("RAM dump discarded" in w for w in outcome.warnings), outcome.warnings
    assert_safe(host)
