"""The cycle's decisions as plain data (vmsnapd/cycleplan.py): tables, and properties over every combination."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsnapd.config import parse_config, resolve
from vmsnapd.cycleplan import (GONE, CommitWay, Hold, commit_way, fs_freeze_failed, kept_dump_failed, memory_verdict,
                               plan_cycle, quiesce_verdict, space_problem, subtree_root)

OVERLAY_DIR = Path("/var/lib/vmsnapd/overlay")
STAMP = "2026-11-29_01:00:00"
DISKS = [("vda", "/tank/web/web-vda.img"), ("vdb", "/tank/web/web-vdb.qcow2")]


def policy(**settings):
    text = '[datasets."tank/web"]\ndomain = "web"\n' + "".join(
        f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v).replace(chr(39), chr(34))}\n"
        for k, v in settings.items())
    return resolve(parse_config(text), ["tank/web"])["tank/web"]


def plan(vm_state, domain="web", **settings):
    return plan_cycle(domain=domain, vm_state=vm_state, policy=policy(**settings), disks=DISKS, skipped=["hdc"],
                      overlay_dir=OVERLAY_DIR, stamp=STAMP)


@pytest.mark.parametrize("vm_state, settings, method, memory, quiesce, with_ram, without_ram", [
    ("running", {}, "overlay", True, "auto", Hold.OVERLAY, Hold.OVERLAY),
    ("running", {"memory": False, "quiesce": "required"}, "overlay", False, "required", Hold.OVERLAY, Hold.OVERLAY),
    ("running", {"method": "pause"}, "pause", True, "auto", Hold.MANUAL, Hold.SUSPEND),
    ("running", {"method": "pause", "quiesce": "off"}, "pause", True, "off", Hold.MANUAL, Hold.SUSPEND),
    ("paused", {}, "pause", True, "off", Hold.MANUAL, Hold.ALREADY_PAUSED),
    ("paused", {"method": "pause", "memory": False}, "pause", False, "off", Hold.MANUAL, Hold.ALREADY_PAUSED),
    ("shutoff", {}, "plain", False, "off", None, None),
    ("other", {"method": "pause"}, "plain", False, "off", None, None),
    (None, {}, "plain", False, "off", None, None),
])
def test_plan_by_vm_state_and_policy(vm_state, settings, method, memory, quiesce, with_ram, without_ram):
    got = plan(vm_state, **settings)
    assert (got.method, got.memory, got.quiesce) == (method, memory, quiesce)
    assert got.skipped == ("hdc",)
    if method != "plain":
        assert got.captured == ("vda", "vdb")
        assert (got.hold(True), got.hold(False)) == (with_ram, without_ram)
        assert got.was_paused == (vm_state == "paused")


@pytest.mark.parametrize("vm_state, live, captured_live", [
    ("running", True, True), ("running", False, False), ("paused", True, False), ("paused", False, False),
    ("shutoff", True, False),
])
def test_a_guest_paused_already_is_never_captured_live(vm_state, live, captured_live):
    """It writes nothing: a capture that keeps it paused holds the same RAM, without the live capture's caveat."""
    assert plan(vm_state, live=live).live == captured_live


def test_overlay_paths_are_vmsnapds_names_in_overlay_dir():
    got = plan("running")
    assert [(o.target, o.base_path, o.overlay_path) for o in got.overlays] == [
        ("vda", "/tank/web/web-vda.img", f"{OVERLAY_DIR}/web_vda_{STAMP}.qcow2"),
        ("vdb", "/tank/web/web-vdb.qcow2", f"{OVERLAY_DIR}/web_vdb_{STAMP}.qcow2")]
    assert plan("running", method="pause").overlays == ()


def test_a_plain_dataset_has_a_plain_plan():
    got = plan_cycle(domain=None, vm_state=None, policy=policy(), disks=[], skipped=[], overlay_dir=OVERLAY_DIR,
                     stamp=STAMP)
    assert got.method == "plain" and not got.memory and got.overlays == ()


@given(vm_state=st.sampled_from(["running", "paused", "shutoff", "other", None]),
       method=st.sampled_from(["overlay", "pause"]), memory=st.booleans(),
       quiesce=st.sampled_from(["auto", "required", "off"]), with_ram=st.booleans())
def test_plan_properties(vm_state, method, memory, quiesce, with_ram):
    got = plan(vm_state, method=method, memory=memory, quiesce=quiesce)
    active = vm_state in ("running", "paused")
    assert (got.method == "plain") == (not active)
    assert got.quiesce == "off" or vm_state == "running"  # a paused guest's agent cannot answer
    assert bool(got.overlays) == (got.method == "overlay")
    assert len({o.overlay_path for o in got.overlays}) == len(got.overlays)
    assert all(Path(o.overlay_path).parent == OVERLAY_DIR for o in got.overlays)
    if active:
        hold = got.hold(with_ram)
        assert hold != Hold.SUSPEND or vm_state == "running"  # never pause what someone else paused
        assert (hold == Hold.OVERLAY) == (got.method == "overlay")


@pytest.mark.parametrize("mode, channel, answers, go, fail, warning, info", [
    ("off", True, True, False, False, False, False),
    ("auto", False, None, False, False, False, True),
    ("auto", True, False, False, False, True, False),
    ("auto", True, True, True, False, False, False),
    ("required", False, False, False, True, False, False),
    ("required", True, False, False, True, False, False),
    ("required", True, True, True, False, False, False),
])
def test_quiesce_verdict(mode, channel, answers, go, fail, warning, info):
    got = quiesce_verdict("web", mode, channel, answers)
    assert (got.go, bool(got.fail), bool(got.warning), bool(got.info)) == (go, fail, warning, info)


@pytest.mark.parametrize("mode, fails", [("auto", False), ("required", True)])
def test_a_failed_fs_freeze(mode, fails):
    got = fs_freeze_failed("web", mode, "agent timed out")
    assert not got.go and bool(got.fail) == fails and bool(got.warning) != fails


@pytest.mark.parametrize("problem, on_failure, go, fail", [
    (None, "fail", True, False), (None, "disk-only", True, False),
    ("full", "fail", False, True), ("full", "disk-only", False, False),
])
def test_memory_verdict(problem, on_failure, go, fail):
    got = memory_verdict(problem, on_failure)
    assert (got.go, bool(got.fail), bool(got.warning)) == (go, fail, problem is not None and not fail)


@pytest.mark.parametrize("on_failure, fails", [("fail", True), ("disk-only", False)])
def test_a_dump_not_kept(on_failure, fails):
    got = kept_dump_failed("ram_dir full", on_failure)
    assert bool(got.fail) == fails and "the snapshot" in (got.fail or got.warning)


def test_space_problem_names_the_first_folder_too_small():
    mib = 1 << 20
    assert space_problem({"/a": 200 * mib, "/b": 300 * mib}, 100 * mib, 1.1) is None
    assert space_problem({"/a": 200 * mib, "/b": 100 * mib}, 100 * mib, 1.1).startswith("/b has 100 MiB free")


@pytest.mark.parametrize("state, way", [("running", CommitWay.LIVE), ("paused", CommitWay.LIVE),
                                        ("shutoff", CommitWay.OFFLINE), ("other", CommitWay.OFFLINE),
                                        (GONE, CommitWay.FILE)])
def test_commit_way(state, way):
    assert commit_way(state) == way


@pytest.mark.parametrize("datasets, existing, root", [
    (["t/a"], ["t/a"], None),
    (["t/a", "t/a/b"], ["t", "t/a", "t/a/b"], "t/a"),
    (["t/a", "t/a/b"], ["t/a", "t/a/b", "t/a/c"], None),  # t/a/c would be taken too
    (["t/a", "t/b"], ["t", "t/a", "t/b"], None),  # siblings
])
def test_subtree_root(datasets, existing, root):
    assert subtree_root(datasets, existing) == root
