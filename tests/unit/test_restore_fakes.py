"""The fault paths of an in-place restore, its undo and its drop, in milliseconds: `execute_restore` runs against
the ZFS model of fakehost.TreeZfs (clone, promote, rename as real ZFS does them) and the fake libvirt. The same
paths against real ZFS and libvirt: tests/integration/test_restore.py."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from fakehost import FakeHypervisor, Killed, TreeZfs
from vmsnapd.actions.context import Context
from vmsnapd.actions.restore import (RestoreFailed, execute_drop, execute_restore, execute_undo, load_records,
                                     plan_drop, plan_restore, plan_undo)
from vmsnapd.config import parse_config
from vmsnapd.hvtypes import RUNNING, SHUTOFF, HypervisorError
from vmsnapd.runner import Runner
from vmsnapd.zfs import ZfsError

DS = "tank/VM/web"
CHILD = "tank/VM/web/data"
S1 = "autosnap_2026-11-29_01:00:00_hourly"
S2 = "autosnap_2026-11-29_02:00:00_hourly"
NOW = datetime(2026, 11, 30, 1, 2, 3, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch):
    """Durability is test_files.py's; here it only costs time on a busy disk."""
    monkeypatch.setattr("os.fsync", lambda fd: None)


def setup(tmp_path, *, state=SHUTOFF, child=False):
    zfs = TreeZfs(tmp_path / "mnt", {"tank": [], "tank/VM": [], DS: [S1, S2], **({CHILD: [S1, S2]} if child else {})})
    hv = FakeHypervisor()
    disks = {"vda": f"{zfs.mountpoint_of(DS)}/web-vda.img"}
    if child:
        disks["vdb"] = f"{zfs.mountpoint_of(CHILD)}/web-vdb.img"
    hv.add("web", disks, state=state)
    text = (f'[daemon]\noverlay_dir = "{tmp_path}/overlay"\nstate_dir = "{tmp_path}/state"\n'
            f'ram_dir = "{tmp_path}/ram"\n[datasets."{DS}"]\ndomain = "web"\n'
            + (f'[datasets."{CHILD}"]\ndomain = "none"\n' if child else ""))
    ctx = Context(config=parse_config(text), config_path=tmp_path / "vmsnapd.toml", runner=Runner(), zfs=zfs,
                  now=lambda: NOW, _hypervisor=hv)
    return ctx, zfs, hv


def restore(ctx, *, force_stop=False):
    return execute_restore(ctx, plan_restore(ctx, "web", S1, clone=None, no_memory=True, force_stop=force_stop))


def test_restore_then_undo_gives_back_exactly_what_was_there(tmp_path):
    ctx, zfs, hv = setup(tmp_path, child=True)
    before = zfs.state()

    done = restore(ctx)

    assert any("kept aside" in line for line in done)
    assert zfs.sets[DS].origin is None and zfs.sets[DS].snapshots == [S1]  # promoted: the restored one leads
    assert hv.verbs("start") == [("start", "web")]
    assert load_records(ctx.state_dir).records["web"].complete
    hv.domains["web"].state = SHUTOFF

    execute_undo(ctx, plan_undo(ctx, "web"))

    assert zfs.state() == before
    assert load_records(ctx.state_dir).records == {}


def test_drop_destroys_only_what_was_set_aside(tmp_path):
    ctx, zfs, hv = setup(tmp_path)
    restore(ctx)

    execute_drop(ctx, plan_drop(ctx, "web"))

    assert sorted(zfs.sets) == ["tank", "tank/VM", DS]
    assert zfs.sets[DS].snapshots == [S1] and zfs.sets[DS].origin is None
    assert load_records(ctx.state_dir).records == {}


def _steps(tmp_path, child=False):
    """Every zfs call a successful restore makes, in order (to fail each one in turn)."""
    ctx, zfs, _hv = setup(tmp_path / "probe", child=child)
    restore(ctx)
    return [c for c in zfs.calls if c[0] in ("rename", "clone", "promote", "set_property")]


@pytest.mark.parametrize("child", [False, True])
@pytest.mark.parametrize("was", [SHUTOFF, RUNNING])
def test_a_failing_zfs_step_is_rolled_back_completely(tmp_path, child, was):
    for index, step in enumerate(_steps(tmp_path, child)):
        ctx, zfs, hv = setup(tmp_path / f"run{index}", state=was, child=child)
        before = zfs.state()
        verb = step[0]
        nth = sum(1 for s in _steps(tmp_path / f"again{index}", child)[:index] if s[0] == verb)
        zfs.fail(verb, *[None] * nth, ZfsError(f"{verb}: pool I/O error", step[1]))

        with pytest.raises(RestoreFailed) as err:
            restore(ctx, force_stop=was == RUNNING)

        assert "pool I/O error" in str(err.value)
        assert ("nothing was changed" in str(err.value)) == (index == 0), str(err.value)
        assert zfs.state() == before, f"step {index} ({step}) left {zfs.state()}"
        assert load_records(ctx.state_dir).records == {}
        # A VM the restore stopped boots again from its own disks (its RAM was lost by the stop); never one
        # that was off.
        assert hv.verbs("start") == ([("start", "web")] if was == RUNNING else [])


@pytest.mark.parametrize("child", [False, True])
def test_a_restore_killed_at_any_step_is_undone_by_undo(tmp_path, child):
    for index, step in enumerate(_steps(tmp_path, child)):
        ctx, zfs, hv = setup(tmp_path / f"run{index}", child=child)
        before = zfs.state()
        verb = step[0]
        nth = sum(1 for s in _steps(tmp_path / f"again{index}", child)[:index] if s[0] == verb)
        zfs.fail(verb, *[None] * nth, Killed())

        with pytest.raises(Killed):
            restore(ctx)
        record = load_records(ctx.state_dir).records["web"]
        assert not record.complete

        execute_undo(ctx, plan_undo(ctx, "web"))

        # Names, origins, snapshots, mountpoints and what is mounted exactly as before: also killed between
        # `zfs unmount` and `zfs rename`, where the dataset was left unmounted.
        assert zfs.state() == before, f"killed at step {index} ({step})"
        assert load_records(ctx.state_dir).records == {}


def test_an_undo_mounts_only_what_was_mounted_before_the_restore(tmp_path):
    ctx, zfs, hv = setup(tmp_path, child=True)
    zfs.sets[CHILD].mounted = False  # the admin keeps it unmounted
    before = zfs.state()
    zfs.fail("rename", Killed())  # killed after unmounting the VM's dataset, before renaming it

    with pytest.raises(Killed):
        restore(ctx)
    assert not zfs.sets[DS].mounted
    done = execute_undo(ctx, plan_undo(ctx, "web"))

    assert zfs.state() == before
    assert f"mounted {DS} again" in done and not any(CHILD in line for line in done)


def test_a_vm_that_does_not_boot_after_the_swap_keeps_the_record(tmp_path):
    ctx, zfs, hv = setup(tmp_path)
    hv.fail("start", HypervisorError("start web: cannot access storage file"))

    with pytest.raises(RestoreFailed) as err:
        restore(ctx)

    assert "the datasets are restored but web did not start" in str(err.value)
    assert load_records(ctx.state_dir).records["web"].complete
    assert zfs.sets[DS].snapshots == [S1]
    execute_undo(ctx, plan_undo(ctx, "web"))
    assert zfs.sets[DS].snapshots == [S1, S2] and zfs.sets[DS].origin is None


def test_undo_refuses_a_clone_with_foreign_snapshots(tmp_path):
    ctx, zfs, hv = setup(tmp_path)
    restore(ctx)
    hv.domains["web"].state = SHUTOFF
    zfs.sets[DS].snapshots.append("admins-own")
    before = zfs.state()

    with pytest.raises(RestoreFailed, match="did not take"):
        plan_undo(ctx, "web")

    assert zfs.state() == before


def test_a_clone_that_does_not_boot_is_taken_back_even_when_undefining_it_fails(tmp_path):
    ctx, zfs, hv = setup(tmp_path)
    before = zfs.state()
    hv.fail("start", HypervisorError("start web-copy: cannot access storage file"))
    hv.fail("undefine", HypervisorError("undefine web-copy: operation failed"))

    with pytest.raises(RestoreFailed) as err:
        execute_restore(ctx, plan_restore(ctx, "web", S1, clone="web-copy", no_memory=True, force_stop=False))

    assert "cannot access storage file" in str(err.value) and "partial clone was removed" in str(err.value)
    assert zfs.state() == before  # the clone dataset went although the undefine before it failed
    assert [v[0] for v in hv.verbs("define", "start", "undefine")] == ["define", "start", "undefine"]
