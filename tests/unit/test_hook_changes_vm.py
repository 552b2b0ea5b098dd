"""A pre_snapshot hook that changes the VM (drill, session 19): the cycle verifies the VM after the hook and acts on
it as it is then — a guest the hook paused stays paused (vmsnapd resumes only what it paused), a guest the hook
resumed is not left paused, and disks the hook moved onto an overlay of its own fail the cycle before anything is
touched (a snapshot of the dataset's still file with the RAM of now would be a restore point whose RAM is newer than
its disk). The cycle re-reads the domain's state once after the hook: `fail("state", None, effect)` makes the hook's
change happen at that second look."""
from __future__ import annotations

from fakehost import make_host

from vmsnapd.hvtypes import PAUSED, RUNNING


def _by_hook(host, change):
    host.hv.fail("state", None, change)


def test_a_guest_the_hook_paused_is_captured_and_left_paused(tmp_path):
    host = make_host(tmp_path, policy={"method": "pause", "quiesce": "off",
                                       "hooks": {"pre_snapshot": ["/bin/true"]}})
    _by_hook(host, lambda: setattr(host.hv.domains["web"], "state", PAUSED))

    outcome = host.cycle()

    assert outcome.ok, outcome.error
    assert outcome.snapshots == ["tank/web@autosnap_2026-11-29_01:00:00_hourly"]
    assert host.hv.verbs("resume", "suspend") == []  # the hook's pause is the hook's: not ours to end
    assert host.hv.domains["web"].state == PAUSED
    (manual,) = host.hv.verbs("snapshot_manual")
    assert manual[1] == "web"
    assert host.records() == []


def test_a_guest_the_hook_resumed_is_not_left_paused(tmp_path):
    host = make_host(tmp_path, state=PAUSED, policy={"method": "pause", "quiesce": "off",
                                                     "hooks": {"pre_snapshot": ["/bin/true"]}})
    _by_hook(host, lambda: setattr(host.hv.domains["web"], "state", RUNNING))

    outcome = host.cycle()

    assert outcome.ok, outcome.error
    assert host.hv.domains["web"].state == RUNNING  # paused for the snapshot by us, so resumed by us
    assert [c[0] for c in host.hv.verbs("snapshot_manual", "resume")] == ["snapshot_manual", "resume"]
    assert host.records() == []


def test_disks_the_hook_moved_onto_its_own_overlay_fail_the_cycle_untouched(tmp_path):
    host = make_host(tmp_path, policy={"hooks": {"pre_snapshot": ["/bin/true"]}})
    hook_overlay = str(tmp_path / "elsewhere" / "web-vda.hook.qcow2")
    _by_hook(host, lambda: host.hv.domains["web"].live.update(vda=hook_overlay))

    outcome = host.cycle()

    assert not outcome.ok
    assert "the disks of web changed after the cycle began" in outcome.error, outcome.error
    assert hook_overlay in outcome.error
    assert host.zfs.snapshots == [] and host.records() == [] and host.dumps() == [] and host.overlay_files() == []
    assert host.hv.verbs("snapshot_external", "snapshot_manual", "suspend", "fs_freeze") == []
    assert host.hv.domains["web"].live["vda"] == hook_overlay and host.hv.domains["web"].state == RUNNING


def test_a_vm_the_hook_leaves_as_it_was_runs_the_plan_unchanged(tmp_path):
    host = make_host(tmp_path, policy={"quiesce": "off", "hooks": {"pre_snapshot": ["/bin/true"]}})

    outcome = host.cycle()

    assert outcome.ok, outcome.error
    assert [c[0] for c in host.hv.verbs("snapshot_external", "commit_active")] == [
        "snapshot_external", "commit_active"]
    assert host.hv.domains["web"].state == RUNNING
