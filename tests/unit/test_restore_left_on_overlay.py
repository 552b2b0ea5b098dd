"""A restore of a VM that an interrupted cycle left on its overlay is refused with the way out (`vmsnapd recover`)
before anything is touched: its newest writes are in the overlay, not in its datasets. Against the fake host; the
same on the lab: tests/integration/test_restore_drill.py."""
from __future__ import annotations

import pytest

from fakehost import make_host
from vmsnapd.actions.restore import RestoreFailed, plan_restore


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch):
    monkeypatch.setattr("os.fsync", lambda fd: None)


def _killed_on_overlay(tmp_path):
    host = make_host(tmp_path, policy={"daily": 1})
    assert host.cycle(("daily",)).error is None
    (snap,) = [n for ds, n in ((s.dataset, s.name) for s in host.zfs.listing().snapshots)]
    host.cycle_killed_at_zfs_snapshot()
    assert host.overlay_files() and host.records()
    return host, snap


@pytest.mark.parametrize("clone", [None, "web2"])
def test_refused_with_recover_as_the_way_out_and_nothing_touched(tmp_path, clone):
    host, snap = _killed_on_overlay(tmp_path)
    with pytest.raises(RestoreFailed, match="vmsnapd recover") as refused:
        plan_restore(host.context(), "web", snap, clone=clone, no_memory=True, force_stop=True)
    assert "exclude_disks" not in str(refused.value) and "nothing was changed" in str(refused.value)
    assert host.hv.verbs("destroy", "define", "start") == []


def test_a_shut_off_vm_whose_definition_names_the_overlay_is_refused_too(tmp_path):
    """The VM stopped while on its overlay and the cycle was killed before it could commit offline: only the
    persistent definition says where the newest writes are."""
    host, snap = _killed_on_overlay(tmp_path)
    dom = host.hv.domains["web"]
    dom.state = "shutoff"
    dom.persistent = dict(dom.live)  # libvirt moves the persistent definition onto an external snapshot's overlay
    assert all(p.startswith(str(host.overlay_dir)) for p in dom.persistent.values())
    with pytest.raises(RestoreFailed, match="vmsnapd recover"):
        plan_restore(host.context(), "web", snap, clone=None, no_memory=True, force_stop=True)


def test_an_overlay_no_definition_names_blocks_nothing(tmp_path):
    """The commit ran (both definitions on the base) but the kill came before the overlay file was deleted: it holds
    nothing the base lacks, recover deletes it; the restore is planned."""
    host, snap = _killed_on_overlay(tmp_path)
    dom = host.hv.domains["web"]
    base = host.records()[0].overlays[0].base_path
    dom.live, dom.persistent = {"vda": base}, {"vda": base}
    assert plan_restore(host.context(), "web", snap, clone=None, no_memory=True, force_stop=True).entries


def test_after_recover_the_restore_is_planned(tmp_path):
    host, snap = _killed_on_overlay(tmp_path)
    host.recover()
    plan = plan_restore(host.context(), "web", snap, clone=None, no_memory=True, force_stop=True)
    assert plan.stop_first and plan.entries
