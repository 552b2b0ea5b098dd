"""VM groups (docs/groups.md) in milliseconds: the config rules, the pure scheduling of a group, and every fault path
of a group's cycle against the in-memory host of fakehost.py — a member failing at each point, the barrier timing
out, zfs failing at the group step, a journal write failing, a crash at the barrier: every VM resumed, nothing left
paused, each member's outcome right. The same on real libvirt and ZFS: tests/integration/test_groups.py."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fakehost import STAMP, FakeHypervisor, FakeZfs, FlakyJournal, FlakyRamStore, Host, _toml
from vmsnapd.config import ConfigError, group_members, parse_config, resolve
from vmsnapd.cycle import CycleEnv
from vmsnapd.groupcycle import GroupCycle
from vmsnapd.groupplan import group_report, schedule_units
from vmsnapd.hvtypes import PAUSED, RUNNING, SHUTOFF, HypervisorError
from vmsnapd.journal import JournalError
from vmsnapd.runner import Runner
from vmsnapd.targets import Target, plan_targets
from vmsnapd.zfs import ZfsError

NAME = "autosnap_2026-11-29_01:00:00_hourly"
BOTH = [f"tank/app@{NAME}", f"tank/db@{NAME}"]


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    monkeypatch.setattr("os.fsync", lambda fd: None)


# -- config ------------------------------------------------------------------------------------------------------


def _config(app: str = "", db: str = "") -> str:
    return (f'[datasets."tank/app"]\ngroup = "shop"\nhourly = 1\ndaily = 0\n{app}\n'
            f'[datasets."tank/db"]\ngroup = "shop"\nhourly = 1\ndaily = 0\n{db}\n')


def test_group_members_resolve_and_are_reported():
    config = parse_config(_config() + '[datasets."tank/web"]\nhourly = 2\n')
    assert group_members(config) == {"shop": ["tank/app", "tank/db"]}
    policies = resolve(config, ["tank/app", "tank/db", "tank/web"])
    assert [policies[d].group for d in ("tank/app", "tank/db", "tank/web")] == ["shop", "shop", ""]
    assert group_report({"shop": [("tank/app", "overlay"), ("tank/db", "pause")]}) == [
        "group shop: tank/app, tank/db (held still together, one snapshot step)",
        'group shop: tank/app has method "overlay"; its group\'s cycles hold it with method "pause" (docs/groups.md)']


def test_group_members_must_keep_the_same_periods():
    with pytest.raises(ConfigError) as err:
        parse_config(_config(db="weekly = 7"))
    assert err.value.errors == [
        'datasets."tank/db".group: members of group \'shop\' must keep the same periods (their snapshots share one '
        "name): tank/db takes hourly, weekly, monthly, tank/app takes hourly, monthly"]


def test_group_periods_compare_frequent_period_and_autosnap():
    with pytest.raises(ConfigError, match="frequently every 5 min"):
        parse_config(_config(app="frequently = 4\nfrequent_period = 5", db="frequently = 4"))
    with pytest.raises(ConfigError, match="autosnap = false"):
        parse_config(_config(db="autosnap = false"))
    parse_config(_config(app="frequently = 4\nhourly_min = 30", db="frequently = 9"))  # counts and times may differ


def test_group_needs_a_domain():
    with pytest.raises(ConfigError, match='group \'shop\' needs a VM, but the dataset has domain = "none"'):
        parse_config(_config(db='domain = "none"'))


def test_group_from_a_template_and_a_recursive_table():
    config = parse_config('[templates.vms]\ngroup = "shop"\n[datasets."tank/vms"]\nuse_template = "vms"\n'
                          'recursive = true\nprocess_children_only = true\n')
    policies = resolve(config, ["tank/vms", "tank/vms/app", "tank/vms/db"])
    assert {d: p.group for d, p in policies.items()} == {"tank/vms/app": "shop", "tank/vms/db": "shop"}


@given(st.text(max_size=70))
def test_any_group_value_is_valid_or_a_clear_error(name):
    quoted = "".join(f"\\u{ord(c):04X}" if ord(c) < 0x20 or c in '"\\\x7f' else c for c in name)
    text = f'[datasets."tank/app"]\ngroup = "{quoted}"\n'
    try:
        config = parse_config(text)
    except ConfigError as exc:
        assert all(e.startswith('datasets."tank/app".group') for e in exc.errors), exc.errors
        return
    assert config.datasets["tank/app"].group == name


@pytest.mark.parametrize("bad", ["", "-x", "a b", "a/b", "x" * 65, "é"])
def test_bad_group_names_are_refused(bad):
    if bad == "":
        assert parse_config(_config().replace('group = "shop"', 'group = ""')).datasets["tank/app"].group == ""
        return
    with pytest.raises(ConfigError, match="group"):
        parse_config(f'[datasets."tank/app"]\ngroup = {_toml(bad)}\n')


# -- scheduling (pure) ---------------------------------------------------------------------------------------


def _target(name: str, group: str, method: str = "overlay", domain: str | None = None) -> Target:
    policy = resolve(parse_config(f'[datasets."{name}"]\nmethod = "{method}"\n'), [name])[name]
    return Target(policy=policy, datasets=[name], domain=domain or name.rsplit("/", 1)[-1], group=group)


def test_a_group_is_one_unit_with_the_union_of_its_periods_and_the_pause_method():
    app, db, web = _target("tank/app", "shop"), _target("tank/db", "shop", "pause"), _target("tank/web", "")
    units = schedule_units([(app, ["hourly"]), (web, ["daily"]), (db, ["daily"]), (_target("tank/x", ""), [])])
    assert [(u.group, [(t.name, p) for t, p in u.members]) for u in units] == [
        ("shop", [("tank/app", ["hourly", "daily"]), ("tank/db", ["hourly", "daily"])]),
        ("", [("tank/web", ["daily"])])]
    assert [t.policy.method for t, _ in units[0].members] == ["pause", "pause"]
    assert units[0].notes == ['group shop: app is held with method "pause" instead of "overlay": the overlay method '
                              "resumes a guest before the group is snapshotted"]


def test_a_group_nothing_is_due_for_is_no_unit():
    assert schedule_units([(_target("tank/app", "shop"), []), (_target("tank/db", "shop"), [])]) == []


# -- the group's cycle on the fake host --------------------------------------------------------------------------


class GroupHypervisor(FakeHypervisor):
    """The fake libvirt with faults per domain: `broken[(verb, domain)]` is raised (or run, when callable)."""

    def __init__(self) -> None:
        super().__init__()
        self.broken: dict[tuple[str, str], object] = {}
        self.paused_together = threading.Event()

    def _fault(self, verb: str, name: str) -> None:
        effect = self.broken.get((verb, name))
        if isinstance(effect, BaseException):
            raise effect
        if callable(effect):
            effect()

    def snapshot_manual(self, name, targets, memory_file, *, live, skip_disks):
        self._fault("snapshot_manual", name)
        super().snapshot_manual(name, targets, memory_file, live=live, skip_disks=skip_disks)

    def suspend(self, name):
        self._fault("suspend", name)
        super().suspend(name)


class MemberJournal(FlakyJournal):
    """A journal whose write of `state` fails for one domain's record only."""

    def __init__(self, state_dir: Path, domain: str, state: str) -> None:
        super().__init__(state_dir)
        self.domain, self.state = domain, state

    def update(self, record, **changes):
        if record.domain == self.domain and str(changes.get("state", "")) == self.state:
            raise JournalError(f"cannot write journal record ({self.state}): No space left on device")
        return super().update(record, **changes)


def make_group_host(root: Path, *, app: dict | None = None, db: dict | None = None, journal=None) -> Host:
    hv = GroupHypervisor()
    mounts = {}
    text = (f'[daemon]\noverlay_dir = "{root}/overlay"\nstate_dir = "{root}/state"\nram_dir = "{root}/ram"\n'
            f'ram_staging_dir = "{root}/staging"\n')
    for name, extra in (("app", app), ("db", db)):
        mount = mounts[f"tank/{name}"] = root / "tank" / name
        mount.mkdir(parents=True)
        (mount / "disk.img").write_bytes(b"base")
        hv.add(name, {"vda": str(mount / "disk.img")})
        settings = {"hourly": 1, "daily": 0, "monthly": 0, "group": "shop", "quiesce": "off", **(extra or {})}
        text += f'[datasets."tank/{name}"]\n' + "".join(f"{k} = {_toml(v)}\n" for k, v in settings.items())
    return Host(root=root, hv=hv, zfs=FakeZfs(mounts), journal=journal or FlakyJournal(root / "state"),
                ram_store=FlakyRamStore(root / "ram", Runner()), overlay_dir=root / "overlay", config_text=text)


def run_group(host: Host, timeout_s: float = 10.0):
    survey = host.survey()
    targets = plan_targets(survey.policies, survey.listing, host.hv)
    env = CycleEnv(zfs=host.zfs, hypervisor=host.hv, journal=host.journal, listing=survey.listing,
                   overlay_dir=host.overlay_dir, ram_store=host.ram_store, ram_compression="none", hook_timeout=10.0)
    [unit] = schedule_units([(t, ["hourly"]) for t in targets])
    return GroupCycle(env, unit, STAMP, timeout_s=timeout_s).run()


def assert_all_running(host: Host) -> None:
    assert {n: d.state for n, d in host.hv.domains.items()} == {"app": RUNNING, "db": RUNNING}
    assert host.records() == []


def test_a_group_is_held_still_together_and_snapshotted_in_one_step(tmp_path):
    host = make_group_host(tmp_path, app={"method": "overlay"})
    order = []
    host.zfs.then("snapshot", lambda: order.append({n: d.state for n, d in host.hv.domains.items()}))

    outcomes = run_group(host)

    assert [(o.domain, o.error, o.snapshots) for o in outcomes] == [
        ("app", None, [BOTH[0]]), ("db", None, [BOTH[1]])]
    assert host.zfs.calls == [("snapshot", ("tank/app", "tank/db"), NAME)]  # one step for both
    assert order == [{"app": PAUSED, "db": PAUSED}]  # both held still at that instant
    assert sorted(c[1] for c in host.hv.verbs("snapshot_manual")) == ["app", "db"]  # overlay taken as pause
    assert host.hv.verbs("snapshot_external") == []
    assert_all_running(host)


def test_the_daemon_pass_runs_a_group_as_one_unit(tmp_path):
    from vmsnapd.actions.take import take_due

    host = make_group_host(tmp_path, db={"memory": False})
    report = take_due(host.context(), host.survey())

    assert sorted((o.domain, o.ok) for o in report.outcomes) == [("app", True), ("db", True)]
    assert host.zfs.calls == [("snapshot", ("tank/app", "tank/db"), NAME)]
    assert sorted(c[:2] for c in host.hv.verbs("snapshot_manual", "suspend")) == [
        ("snapshot_manual", "app"), ("suspend", "db")]
    assert_all_running(host)


def _member_fails(host: Host, point: str) -> None:
    """Make member db fail at `point`, before the group's step."""
    if point == "hold":
        host.hv.broken[("snapshot_manual", "db")] = HypervisorError("snapshot of db: internal error: qemu died")
    elif point == "domain gone":
        host.hv.broken[("snapshot_manual", "db")] = lambda: host.hv.shut_off("db")
    elif point == "journal":
        host.journal = MemberJournal(host.root / "state", "db", "frozen")


@pytest.mark.parametrize("point, why", [
    ("hold", "qemu died"),
    ("domain gone", "no longer running"),
    ("journal", "No space left on device"),
    ("pre hook", "pre_snapshot hook failed"),
    ("no domain", "domain ghost (named by tank/db) does not exist"),
])
def test_a_member_failing_before_the_step_leaves_every_member_unsnapshotted_and_running(tmp_path, point, why):
    db = {"pre hook": {"hooks": {"pre_snapshot": ["/bin/false"]}}, "no domain": {"domain": "ghost"}}.get(point)
    host = make_group_host(tmp_path, db=db)
    _member_fails(host, point)

    outcomes = run_group(host)

    errors = {o.domain: o.error for o in outcomes}
    assert all(e and e.startswith("group shop: no snapshot, member ") for e in errors.values()), errors
    assert why in errors.get("db", errors.get("ghost")), errors
    assert errors["app"].startswith("group shop: no snapshot, member " + ("ghost" if point == "no domain" else "db"))
    assert host.zfs.snapshots == [] and all(not o.snapshots for o in outcomes)
    if point in ("pre hook", "no domain"):  # failed before the members were held: nobody was paused
        assert host.hv.verbs("snapshot_manual", "suspend") == []
    assert host.hv.domains["app"].state == RUNNING
    assert host.hv.domains["db"].state == (SHUTOFF if point == "domain gone" else RUNNING)
    assert host.records() == []


def test_the_barrier_times_out_and_every_member_resumes(tmp_path):
    host = make_group_host(tmp_path)
    host.hv.broken[("snapshot_manual", "db")] = lambda: time.sleep(0.5)  # db's RAM takes too long

    outcomes = run_group(host, timeout_s=0.1)

    assert {o.domain: o.error for o in outcomes} == {
        d: "group shop: no snapshot, timed out after 0.1 s waiting for db to be held still" for d in ("app", "db")}
    assert host.zfs.snapshots == []
    assert_all_running(host)


def test_a_member_late_before_its_hold_times_out_with_nobody_paused(tmp_path):
    host = make_group_host(tmp_path, db={"hooks": {"pre_snapshot": ["/bin/sleep", "0.5"]}})

    outcomes = run_group(host, timeout_s=0.1)

    assert {o.domain: o.error for o in outcomes} == {
        d: "group shop: no snapshot, timed out after 0.1 s waiting for db to be ready" for d in ("app", "db")}
    assert host.hv.verbs("snapshot_manual", "suspend") == [] and host.zfs.snapshots == []
    assert_all_running(host)


def test_zfs_failing_at_the_group_step_fails_every_member_and_resumes_them(tmp_path):
    host = make_group_host(tmp_path)
    host.zfs.fail("snapshot", ZfsError("cannot create snapshot: out of space"))

    outcomes = run_group(host)

    assert [o.error for o in outcomes] == ["group shop: no snapshot: cannot create snapshot: out of space"] * 2
    assert host.zfs.snapshots == []
    assert_all_running(host)
    assert not [p for p in (tmp_path / "overlay").iterdir()]  # the fresh RAM files went too


def test_on_zfs_fuse_the_step_takes_one_command_per_dataset_side_by_side(tmp_path):
    host = make_group_host(tmp_path)
    host.zfs.dialect = "zfs-fuse"

    outcomes = run_group(host)

    assert all(o.ok for o in outcomes) and sorted(host.zfs.snapshots) == BOTH
    assert sorted(host.zfs.calls) == [("snapshot", ("tank/app",), NAME), ("snapshot", ("tank/db",), NAME)]
    assert_all_running(host)


def test_on_zfs_fuse_a_failing_command_undoes_the_others(tmp_path):
    host = make_group_host(tmp_path)
    host.zfs.dialect = "zfs-fuse"
    host.zfs.fail("snapshot", None, ZfsError("cannot create snapshot: out of space"))  # one of the two fails

    outcomes = run_group(host)

    assert [o.error for o in outcomes] == ["group shop: no snapshot: cannot create snapshot: out of space"] * 2
    assert host.zfs.snapshots == [] and [c[0] for c in host.zfs.calls].count("destroy_snapshots") == 1
    assert_all_running(host)


def test_a_journal_write_failing_after_the_step_keeps_the_snapshot_and_resumes_everyone(tmp_path):
    host = make_group_host(tmp_path)
    host.journal = MemberJournal(tmp_path / "state", "app", "snapshotted")

    outcomes = run_group(host)

    errors = {o.domain: o.error for o in outcomes}
    assert errors["db"] is None and "No space left on device" in errors["app"]
    assert sorted(host.zfs.snapshots) == BOTH  # taken for both at one instant: they stay
    assert {n: d.state for n, d in host.hv.domains.items()} == {"app": RUNNING, "db": RUNNING}


class Crash(BaseException):
    """vmsnapd killed: no cleanup runs past this point."""


def test_a_crash_at_the_barrier_leaves_records_that_recover_resumes(tmp_path):
    host = make_group_host(tmp_path)
    host.zfs.fail("snapshot", Crash())
    host.hv.fail("resume", Crash())  # the member not running the step: killed on its way back

    with pytest.raises(Crash):
        run_group(host)

    assert {n: d.state for n, d in host.hv.domains.items()} == {"app": PAUSED, "db": PAUSED}
    assert sorted((r.domain, str(r.state), r.paused_by_us) for r in host.records()) == [
        ("app", "frozen", True), ("db", "frozen", True)]
    host.recover()
    assert_all_running(host)


# -- restore of a group (fakehost.TreeZfs: clone, promote, rename as real ZFS does them) ---------------------------

S1 = "autosnap_2026-11-29_01:00:00_hourly"
S2 = "autosnap_2026-11-29_02:00:00_hourly"


def restore_host(tmp_path, *, state=SHUTOFF, db_snaps=(S1, S2)):
    from datetime import datetime, timezone

    from fakehost import TreeZfs
    from vmsnapd.actions.context import Context

    zfs = TreeZfs(tmp_path / "mnt", {"tank": [], "tank/VM": [], "tank/VM/app": [S1, S2],
                                     "tank/VM/db": list(db_snaps)})
    hv = FakeHypervisor()
    text = (f'[daemon]\noverlay_dir = "{tmp_path}/overlay"\nstate_dir = "{tmp_path}/state"\n'
            f'ram_dir = "{tmp_path}/ram"\nram_staging_dir = "{tmp_path}/staging"\n')
    for name in ("app", "db"):
        hv.add(name, {"vda": f"{zfs.mountpoint_of(f'tank/VM/{name}')}/{name}-vda.img"}, state=state)
        text += f'[datasets."tank/VM/{name}"]\ndomain = "{name}"\ngroup = "shop"\n'
    ctx = Context(config=parse_config(text), config_path=tmp_path / "vmsnapd.toml", runner=Runner(), zfs=zfs,
                  now=lambda: datetime(2026, 11, 30, 1, 2, 3, tzinfo=timezone.utc), _hypervisor=hv)
    return ctx, zfs, hv


def test_restoring_one_member_alone_names_the_others(tmp_path):
    from vmsnapd.actions.restore import plan_restore

    ctx, _zfs, _hv = restore_host(tmp_path)
    plan = plan_restore(ctx, "app", S1, clone=None, no_memory=True, force_stop=False)
    assert plan.notes == [f"app is in group shop with db: restoring app alone brings it back to a different instant "
                          f"than them; `vmsnapd restore --group shop {S1}` restores them together"]


def test_a_group_restore_verifies_every_member_before_touching_any(tmp_path):
    from vmsnapd.actions.group_restore import plan_group_restore
    from vmsnapd.actions.restore import RestoreFailed

    ctx, zfs, hv = restore_host(tmp_path, db_snaps=(S2,))
    before = zfs.state()
    with pytest.raises(RestoreFailed, match=f"group shop: db: snapshot {S1} does not exist on tank/VM/db; nothing"):
        plan_group_restore(ctx, "app", S1, no_memory=True, force_stop=False)
    with pytest.raises(RestoreFailed, match="is neither a VM group nor a member"):
        plan_group_restore(ctx, "nope", S1, no_memory=True, force_stop=False)
    assert zfs.state() == before and hv.verbs("destroy", "start") == []


def test_a_group_restore_restores_every_member_and_each_can_be_undone(tmp_path):
    from vmsnapd.actions.group_restore import execute_group_restore, plan_group_restore
    from vmsnapd.actions.restore import execute_undo, load_records, plan_undo

    ctx, zfs, hv = restore_host(tmp_path, state=RUNNING)
    before = zfs.state()
    gplan = plan_group_restore(ctx, "shop", S1, no_memory=True, force_stop=True)
    assert gplan.domains == ["app", "db"] and all(not p.notes for p in gplan.plans)

    done = execute_group_restore(ctx, gplan)

    assert [c for c in hv.verbs("destroy", "start")] == [("destroy", "app"), ("destroy", "db"), ("start", "app"),
                                                         ("start", "db")]
    assert "booted app (no RAM dump for it)" in done
    assert all(zfs.sets[f"tank/VM/{n}"].snapshots == [S1] for n in ("app", "db"))
    assert sorted(load_records(ctx.state_dir).records) == ["app", "db"]
    for name in ("app", "db"):  # --undo per member keeps working
        hv.domains[name].state = SHUTOFF
        execute_undo(ctx, plan_undo(ctx, name))
    assert zfs.state() == before


def test_a_member_failing_its_swap_takes_the_done_ones_back(tmp_path):
    from vmsnapd.actions.group_restore import execute_group_restore, plan_group_restore
    from vmsnapd.actions.restore import RestoreFailed, load_records

    ctx, zfs, hv = restore_host(tmp_path, state=RUNNING)
    before = zfs.state()
    gplan = plan_group_restore(ctx, "db", S1, no_memory=True, force_stop=True)
    zfs.fail("promote", None, ZfsError("promote: pool I/O error", "tank/VM/db"))  # app's passes, db's fails

    with pytest.raises(RestoreFailed) as err:
        execute_group_restore(ctx, gplan)

    assert str(err.value).startswith("group shop: db: promote: pool I/O error"), str(err.value)
    assert "the members done before were taken back: taking back app — undone: put back tank/VM/app" in str(err.value)
    assert zfs.state() == before
    assert load_records(ctx.state_dir).records == {}
    assert {n: d.state for n, d in hv.domains.items()} == {"app": RUNNING, "db": RUNNING}  # booted again


@pytest.mark.parametrize("extra, says", [
    (["--undo"], "--undo and --drop-aside work per member"),
    (["--drop-aside"], "--undo and --drop-aside work per member"),
    (["--clone", "x"], "does not take --clone"),
])
def test_restore_group_usage_errors(tmp_path, capsys, extra, says):
    from vmsnapd import cli

    config = tmp_path / "vmsnapd.toml"
    config.write_text(_config())
    config.chmod(0o600)
    snapshot = [] if extra[0] in ("--undo", "--drop-aside") else [S1]
    assert cli.main(["restore", "--group", "shop", *snapshot, *extra, "-c", str(config)]) == cli.EX_USAGE
    assert says in capsys.readouterr().err
