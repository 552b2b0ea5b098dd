"""VM groups on the lab (docs/groups.md): two counter guests in one group are held still together and snapshotted
in one step; `restore --group` brings both back to that one instant (each continues at exactly its snapshot's
max + 1, no record rewritten); a member failing before the step leaves the other running and unsnapshotted.
The fault paths in milliseconds: tests/unit/test_groups_fakes.py."""
from __future__ import annotations

import re

import pytest

pytestmark = [pytest.mark.lab]

ONE_HOURLY = {"hourly": 3, "daily": 0, "monthly": 0}


def _group(lab) -> str:
    return lab.unique_name("g")


def _two_members(lab, vm_factory, vmsnapd_env, group, **db_extra):
    app, db = vm_factory(), vm_factory()
    env = vmsnapd_env
    # app keeps the default method (overlay): as a group member it is held with the pause method.
    env.datasets[app.disk.dataset.name] = {**ONE_HOURLY, "domain": app.name, "group": group}
    env.datasets[db.disk.dataset.name] = {**ONE_HOURLY, "domain": db.name, "group": group, "method": "pause",
                                          **db_extra}
    return app, db, env


def _held_before_any_snapshot(log: str, members: list[str]) -> None:
    """Every member was held still (paused) before the group's one snapshot step: their pauses overlap."""
    lines = log.splitlines()
    held = [i for i, line in enumerate(lines) if "held still, waiting for the group" in line]
    taken = [i for i, line in enumerate(lines) if re.search(r"dataset\(s\) of 2 VM\(s\) snapshotted", line)]
    assert len(held) == len(members) and len(taken) == len(members), log
    assert max(held) < min(taken), log


def test_a_group_is_snapshotted_at_one_instant_and_restored_together(lab, vm_factory, vmsnapd_env):
    group = _group(lab)
    app, db, env = _two_members(lab, vm_factory, vmsnapd_env, group)
    check = env.run("config", "check")
    assert f"group {group}: {', '.join(sorted([app.disk.dataset.name, db.disk.dataset.name]))}" in check.stdout
    assert 'method "pause"' in check.stdout  # app's overlay is taken as pause, and config check says so

    proc = env.run("snapshot", app.name)  # one member named: the whole group's cycle

    (snap,) = lab.snapshot_names(app.disk.dataset.name)
    assert lab.snapshot_names(db.disk.dataset.name) == [snap]  # same name on every member
    _held_before_any_snapshot(proc.stderr, [app.name, db.name])
    assert app.dom.isActive() and db.dom.isActive()
    at = {vm.name: lab.snapshot_max_counter(f"{vm.disk.dataset.name}@{snap}", vm.disk.relpath) for vm in (app, db)}
    for vm in (app, db):
        lab.wait_counter_advances(vm, by=10, start=at[vm.name])

    alone = env.run("restore", app.name, snap, "--force-stop", expect=10)
    assert f"{app.name} is in group {group} with {db.name}" in alone.stdout and "--group" in alone.stdout

    for vm in (app, db):
        lab.write_token(vm, "restored")
    done = env.run("restore", "--group", group, snap, "--force-stop", "--yes")
    assert "from their RAM dumps together" in done.stdout, done.stdout
    for vm in (app, db):
        lab.wait_counter_advances(vm, by=5, start=at[vm.name], timeout=60)
        rewritten, first_new = lab.resume_evidence(vm, at[vm.name], "restored")
        assert not rewritten, f"{vm.name}: RAM older than the disk: records {rewritten[:5]} rewritten"
        assert first_new == at[vm.name] + 1, f"{vm.name} resumed at {first_new}, snapshot max was {at[vm.name]}"
    for vm in (app, db):  # each member's replaced state is its own, put back or dropped alone
        lab.stop_vm(vm)
        env.run("restore", "--drop-aside", vm.name, "--yes")


def test_a_member_failing_before_the_step_leaves_the_other_running_and_unsnapshotted(lab, vm_factory,
                                                                                       vmsnapd_env):
    group = _group(lab)
    app, db, env = _two_members(lab, vm_factory, vmsnapd_env, group)
    # db's domain is destroyed and undefined between the planning and its hold (its pre_snapshot hook does it; a
    # member only shut off is taken as the stopped VM it is now, at the group's instant).
    virsh = "/usr/bin/virsh -q -c qemu:///system"
    env.datasets[db.disk.dataset.name]["hooks"] = {
        "pre_snapshot": ["/bin/sh", "-c", f"{virsh} destroy {db.name} && {virsh} undefine {db.name}"]}

    proc = env.run("once", expect=1)

    assert f"group {group}: no snapshot, member {db.name} failed" in proc.stdout + proc.stderr
    assert lab.snapshot_names(app.disk.dataset.name) == [] and lab.snapshot_names(db.disk.dataset.name) == []
    assert app.dom.info()[0] == 1  # VIR_DOMAIN_RUNNING: resumed, not left paused
    lab.wait_counter_advances(app, by=3)
    assert db.name not in lab.conn().listDefinedDomains()
