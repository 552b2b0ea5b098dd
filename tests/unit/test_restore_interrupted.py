"""Ctrl-C half-way through an in-place restore's swap is undone like a failing step: the datasets as before, the VM
booted again, no record left — at every zfs step. A second Ctrl-C during that undo leaves the record for
`restore --undo`. On the lab: tests/integration/test_restore_drill.py."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from fakehost import FakeHypervisor, TreeZfs
from vmsnapd.actions.context import Context
from vmsnapd.actions.restore import RestoreFailed, execute_restore, load_records, plan_restore
from vmsnapd.config import parse_config
from vmsnapd.hvtypes import RUNNING
from vmsnapd.runner import Runner

DS = "tank/VM/web"
S1, S2 = "autosnap_2026-11-29_01:00:00_hourly", "autosnap_2026-11-29_02:00:00_hourly"


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch):
    monkeypatch.setattr("os.fsync", lambda fd: None)


def setup(tmp_path):
    zfs = TreeZfs(tmp_path / "mnt", {"tank": [], "tank/VM": [], DS: [S1, S2]})
    hv = FakeHypervisor()
    hv.add("web", {"vda": f"{zfs.mountpoint_of(DS)}/web-vda.img"}, state=RUNNING)
    text = (f'[daemon]\noverlay_dir = "{tmp_path}/overlay"\nstate_dir = "{tmp_path}/state"\n'
            f'ram_dir = "{tmp_path}/ram"\n[datasets."{DS}"]\ndomain = "web"\n')
    ctx = Context(config=parse_config(text), config_path=tmp_path / "vmsnapd.toml", runner=Runner(), zfs=zfs,
                  now=lambda: datetime(2026, 11, 30, 1, 2, 3, tzinfo=timezone.utc), _hypervisor=hv)
    return ctx, zfs, hv


@pytest.mark.parametrize("verb", ["rename", "clone", "promote"])
def test_ctrl_c_at_any_zfs_step_is_undone_and_the_vm_boots_again(tmp_path, verb):
    ctx, zfs, hv = setup(tmp_path)
    before = zfs.state()
    plan = plan_restore(ctx, "web", S1, clone=None, no_memory=True, force_stop=True)
    zfs.fail(verb, KeyboardInterrupt())
    try:
        execute_restore(ctx, plan)
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C went through: nothing was undone")
    except RestoreFailed as exc:
        assert "interrupted (Ctrl-C)" in str(exc) and "booted again" in str(exc), exc
    else:
        pytest.fail("the restore went through")
    assert zfs.state() == before and load_records(ctx.state_dir).records == {}
    assert hv.verbs("destroy", "start") == [("destroy", "web"), ("start", "web")]


def test_a_second_ctrl_c_during_the_undo_keeps_the_record(tmp_path):
    ctx, zfs, _hv = setup(tmp_path)
    plan = plan_restore(ctx, "web", S1, clone=None, no_memory=True, force_stop=True)
    zfs.fail("promote", KeyboardInterrupt())
    zfs.fail("destroy_dataset", KeyboardInterrupt())  # the undo's discard of the clone
    with pytest.raises(KeyboardInterrupt):
        execute_restore(ctx, plan)
    assert not load_records(ctx.state_dir).records["web"].complete  # `restore --undo` finds it
