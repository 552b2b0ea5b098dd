"""VM groups as they are found at 3 a.m. (drill, session 19): a member paused or shut off when the group's cycle
starts, a member whose pre_snapshot hook pauses it, a member whose hook moves its disk. The group step still holds
every member still at one instant; vmsnapd resumes only what it paused."""
from __future__ import annotations

from test_groups_fakes import BOTH, NAME, make_group_host, run_group

from vmsnapd.hvtypes import PAUSED, RUNNING, SHUTOFF


def test_a_member_paused_at_the_start_is_captured_and_left_paused(tmp_path):
    host = make_group_host(tmp_path)
    host.hv.domains["db"].state = PAUSED  # an admin's pause

    outcomes = run_group(host)

    assert [(o.domain, o.error) for o in outcomes] == [("app", None), ("db", None)]
    assert host.zfs.calls == [("snapshot", ("tank/app", "tank/db"), NAME)]
    assert {n: d.state for n, d in host.hv.domains.items()} == {"app": RUNNING, "db": PAUSED}
    assert [c[1] for c in host.hv.verbs("resume")] == ["app"]
    assert host.records() == []


def test_a_member_shut_off_at_the_start_is_taken_plain_in_the_same_step(tmp_path):
    host = make_group_host(tmp_path)
    host.hv.shut_off("db")

    outcomes = run_group(host)

    assert [(o.domain, o.error, o.snapshots) for o in outcomes] == [("app", None, [BOTH[0]]), ("db", None, [BOTH[1]])]
    assert host.zfs.calls == [("snapshot", ("tank/app", "tank/db"), NAME)]
    assert {n: d.state for n, d in host.hv.domains.items()} == {"app": RUNNING, "db": SHUTOFF}
    assert [c[1] for c in host.hv.verbs("snapshot_manual", "suspend")] == ["app"]
    assert host.records() == []


def test_a_member_its_hook_paused_is_left_paused(tmp_path):
    host = make_group_host(tmp_path, db={"hooks": {"pre_snapshot": ["/bin/true"]}})
    # The cycles look at app, db (planning), then at db again after its hook.
    host.hv.fail("state", None, None, lambda: setattr(host.hv.domains["db"], "state", PAUSED))

    outcomes = run_group(host)

    assert [(o.domain, o.error) for o in outcomes] == [("app", None), ("db", None)]
    assert {n: d.state for n, d in host.hv.domains.items()} == {"app": RUNNING, "db": PAUSED}
    assert [c[1] for c in host.hv.verbs("resume")] == ["app"]


def test_a_member_whose_hook_moved_its_disk_fails_the_group_with_nobody_paused(tmp_path):
    host = make_group_host(tmp_path, db={"hooks": {"pre_snapshot": ["/bin/true"]}})
    host.hv.fail("state", None, None, lambda: host.hv.domains["db"].live.update(vda="/elsewhere/db.hook.qcow2"))

    outcomes = run_group(host)

    errors = {o.domain: o.error for o in outcomes}
    assert all(e.startswith("group shop: no snapshot, member db failed: the disks of db changed") for e in
               errors.values()), errors
    assert host.zfs.snapshots == [] and host.hv.verbs("snapshot_manual", "suspend", "resume") == []
    assert host.records() == []
