"""Ownership rules of recovery and the folder check (vmsnapd.ownership, vmsnapd.overlaynames): pure, table-driven."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsnapd.names import decode_name, encode_name, InvalidName
from vmsnapd.overlaynames import (is_libvirt_snapshot_name, libvirt_snapshot_name, memory_file_name,
                                  overlay_file_name, parse_memory_file_name, parse_overlay_file_name)
from vmsnapd.ownership import (DomainFacts, HostFolders, OverlayFile, Ownership, SnapshotRecord, Step, StepKind,
                               deletable_leftover, folder_nesting_problems, foreign_domain_warnings,
                               host_folder_problems, judge_overlay, plan_domain)

OD = "/var/lib/libvirt/snapshots"
STAMP = "2026-11-29_01:00:00"
BASE = "/tank/VM/web/web-vda.img"
OWNER = Ownership(overlay_dir=OD, managed_domains=frozenset({"web", "my_vm"}))
OURS = f"{OD}/{overlay_file_name('web', 'vda', STAMP)}"
GOOD = OverlayFile(backing=BASE, backing_dataset="tank/VM/web")


# -- names -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("domain,target", [("web", "vda"), ("my_vm", "sdb"), ("a_b_c", "vda"), ("x.y-z", "xvda")])
def test_overlay_name_round_trip(domain, target):
    name = overlay_file_name(domain, target, STAMP)
    parsed = parse_overlay_file_name(name)
    assert (parsed.domain, parsed.target, parsed.stamp) == (domain, target, STAMP)
    mem = parse_memory_file_name(memory_file_name(domain, STAMP))
    assert (mem.domain, mem.stamp) == (domain, STAMP)


@pytest.mark.parametrize("name", [
    "clone.qcow2", "web-vda.qcow2", "base.qcow2", "web_vda.qcow2", f"web_vda_{STAMP}.img",
    f"web_vda_{STAMP}.qcow2.bak", "web_vda_2026-13-40_99:00:00.qcow2", f"_vda_{STAMP}.qcow2",
    f"web_{STAMP}.qcow2",
])
def test_foreign_names_are_not_overlays(name):
    assert parse_overlay_file_name(name) is None


@pytest.mark.parametrize("target,stamp", [("v_da", STAMP), ("vda/x", STAMP), ("", STAMP), ("vda", "yesterday")])
def test_overlay_name_refuses_what_it_could_not_parse_back(target, stamp):
    with pytest.raises(InvalidName):
        overlay_file_name("web", target, stamp)


@given(st.text(min_size=1).filter(lambda s: "/" not in s and "\0" not in s),
       st.from_regex(r"[a-z]{2,4}", fullmatch=True))
def test_overlay_name_round_trips_for_any_domain(domain, target):
    parsed = parse_overlay_file_name(overlay_file_name(domain, target, STAMP))
    if decode_is_possible(domain):
        assert parsed.domain == domain
    else:  # a name too long for a file name is cut to a digest: only its journal record can vouch for the file
        assert parsed is None


def decode_is_possible(domain: str) -> bool:
    try:
        return decode_name(encode_name(domain)) == domain
    except InvalidName:
        return False


def test_libvirt_snapshot_names():
    assert is_libvirt_snapshot_name(libvirt_snapshot_name(1764378000))
    assert not is_libvirt_snapshot_name("vmsnapd-manual") and not is_libvirt_snapshot_name("handmade")


# -- one overlay ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("domain,target,path,facts,ours,why", [
    ("web", "vda", OURS, GOOD, True, "vmsnapd's overlay"),
    # journal: proof, as long as the header names the recorded base
    ("web", "vda", "/elsewhere/x.qcow2", OverlayFile(backing=BASE, journal_base=BASE), True, "journal"),
    ("web", "vda", OURS, OverlayFile(backing="/other/base.img", journal_base=BASE), False, "journal with base"),
    ("web", "vda", OURS, OverlayFile(backing=None, journal_base=BASE), False, "cannot be read"),
    ("unmanaged", "vda", OURS, GOOD, False, "belongs to domain web"),  # name says web, disk of another domain
    ("ghost", "vda", f"{OD}/{overlay_file_name('ghost', 'vda', STAMP)}", GOOD, False, "not managed"),
    ("web", "vdb", OURS, GOOD, False, "belongs to domain web disk vda"),
    ("web", "vda", f"{OD}/clone.qcow2", GOOD, False, "not one vmsnapd gives"),
    ("web", "vda", f"{OD}/sub/{overlay_file_name('web', 'vda', STAMP)}", GOOD, False, "not one vmsnapd gives"),
    ("web", "vda", f"/var/lib/libvirt/images/{overlay_file_name('web', 'vda', STAMP)}", GOOD, False, "not one"),
    ("web", "vda", OURS, OverlayFile(), False, "no readable backing"),
    ("web", "vda", OURS, OverlayFile(backing=BASE), False, "on no managed dataset"),
    ("web", "vda", OURS, OverlayFile(backing=f"{OD}/other.qcow2", backing_dataset="tank/VM/web"), False,
     "in overlay_dir"),
    ("web", "vda", OURS, None, False, "no readable backing"),
])
def test_judge_overlay(domain, target, path, facts, ours, why):
    verdict = judge_overlay(domain, target, path, facts, OWNER)
    assert verdict.ours is ours
    assert why in verdict.reason


# -- one domain ----------------------------------------------------------------------------------------------------

def _facts(**kw) -> DomainFacts:
    return DomainFacts(**{"name": "web", "active": True, "live": (("vda", BASE),), "persistent": (("vda", BASE),),
                          "files": {OURS: GOOD}, **kw})


@pytest.mark.parametrize("facts,steps,warned", [
    # running on base: nothing
    (_facts(), [], 0),
    # running on our overlay (live and persistent): one live commit
    (_facts(live=(("vda", OURS),), persistent=(("vda", OURS),)), [Step(StepKind.COMMIT_LIVE, "vda", OURS, BASE)], 0),
    # shut off, defined on our overlay: offline commit
    (_facts(active=False, live=(("vda", OURS),), persistent=(("vda", OURS),)),
     [Step(StepKind.COMMIT_OFFLINE, "vda", OURS, BASE)], 0),
    # running on base, persistent definition alone on our overlay: point the definition back, nothing committed
    (_facts(persistent=(("vda", OURS),)), [Step(StepKind.REPOINT, "vda", OURS, BASE)], 0),
    # persistent on our overlay but the running disk is not its base: left alone
    (_facts(live=(("vda", "/somewhere/else.img"),), persistent=(("vda", OURS),)), [], 1),
    # a foreign file in overlay_dir, running or defined: reported, never committed
    (_facts(live=(("vda", f"{OD}/clone.qcow2"),), files={f"{OD}/clone.qcow2": GOOD}), [], 1),
    (_facts(active=False, persistent=(("vda", f"{OD}/clone.qcow2"),), files={f"{OD}/clone.qcow2": GOOD}), [], 1),
    # disks outside overlay_dir that no journal names are not even looked at
    (_facts(live=(("vda", "/images/clone.qcow2"),), persistent=(("vda", "/images/clone.qcow2"),)), [], 0),
])
def test_plan_domain_overlays(facts, steps, warned):
    plan = plan_domain(facts, OWNER)
    assert plan.steps == steps
    assert len(plan.warnings) == warned, plan.warnings


def test_unmanaged_domain_with_our_pattern_is_left_alone():
    path = f"{OD}/{overlay_file_name('other', 'vda', STAMP)}"
    plan = plan_domain(DomainFacts(name="other", active=False, persistent=(("vda", path),), files={path: GOOD},
                                   snapshots=(SnapshotRecord("vmsnapd-1", (("vda", path),)),)), OWNER)
    assert plan.steps == []
    assert any("not managed" in w for w in plan.warnings)


@pytest.mark.parametrize("record,dropped,warned", [
    (SnapshotRecord("vmsnapd-1764378000"), True, 0),
    (SnapshotRecord("handmade", (("vda", OURS),)), True, 0),  # names only our overlay: ours
    (SnapshotRecord("handmade", (("vda", f"{OD}/clone.qcow2"),)), False, 1),  # foreign file in overlay_dir
    (SnapshotRecord("nightly", (("vda", "/images/n.qcow2"),)), False, 0),  # the admin's own, elsewhere: silent
    (SnapshotRecord("internal"), False, 0),  # internal snapshot, no files
    (SnapshotRecord("mem", (("vda", OURS),), memory=f"{OD}/{memory_file_name('web', STAMP)}"), True, 0),
    (SnapshotRecord("mem", (("vda", OURS),), memory=f"{OD}/ram.save"), False, 1),
])
def test_plan_domain_metadata(record, dropped, warned):
    plan = plan_domain(_facts(snapshots=(record,)), OWNER)
    assert (Step(StepKind.DROP_METADATA, snapshot=record.name) in plan.steps) is dropped
    assert len(plan.warnings) == warned


def test_metadata_of_unmanaged_domain_is_never_dropped():
    plan = plan_domain(DomainFacts(name="other", active=True, snapshots=(SnapshotRecord("vmsnapd-1"),)), OWNER)
    assert plan.steps == []


def test_foreign_domain_warnings():
    files = [("vda", f"{OD}/clone.qcow2"), ("vda", "/images/base.qcow2"), ("vda", f"{OD}/clone.qcow2")]
    warnings = foreign_domain_warnings("other", files, OWNER)
    assert len(warnings) == 1 and "clone.qcow2" in warnings[0] and "left alone" in warnings[0]


@pytest.mark.parametrize("path,domain,ok", [
    (OURS, "web", True),
    (f"{OD}/{memory_file_name('web', STAMP)}", "web", True),
    (OURS, "other", False),
    ("/etc/passwd", "web", False),
    (f"{OD}/clone.qcow2", "web", False),
])
def test_deletable_leftover(path, domain, ok):
    assert deletable_leftover(path, domain, OD) is ok


# -- folders -----------------------------------------------------------------------------------------------------

DEFAULTS = {"overlay_dir": OD, "ram_dir": "/var/lib/vmsnapd/ram", "state_dir": "/var/lib/vmsnapd"}


@pytest.mark.parametrize("change,bad", [
    ({}, set()),
    ({"overlay_dir": "/"}, {"overlay_dir"}),
    ({"overlay_dir": "/var/lib/vmsnapd"}, {"overlay_dir"}),  # equal to state_dir, contains ram_dir
    ({"overlay_dir": "/var/lib/vmsnapd/ram/x"}, {"overlay_dir"}),
    ({"overlay_dir": "/var/lib"}, {"overlay_dir"}),
    ({"ram_dir": OD}, {"overlay_dir"}),
    ({"ram_dir": "/var/lib/vmsnapd/cycles"}, {"ram_dir"}),
    ({"state_dir": "/var/lib/vmsnapd/ram/state"}, {"ram_dir"}),
    ({"state_dir": "//"}, {"state_dir"}),
    ({"ram_dir": "/srv/ram", "state_dir": "/srv/ram/../ram"}, {"ram_dir"}),
])
def test_folder_nesting(change, bad):
    assert {key for key, _ in folder_nesting_problems({**DEFAULTS, **change})} == bad


def _host(**kw) -> HostFolders:
    return HostFolders(folders={**DEFAULTS, **kw.pop("folders", {})}, **kw)


@pytest.mark.parametrize("host,expect", [
    (_host(), []),
    (_host(folders={"overlay_dir": "/var/lib/libvirt/images"},
           domain_disks={"clone": [("vda", "/var/lib/libvirt/images/clone.qcow2")]}),
     ["daemon.overlay_dir = /var/lib/libvirt/images: holds disk vda of domain clone"]),
    # the backing file of a linked clone counts too
    (_host(domain_disks={"clone": [("vda", "/elsewhere/c.qcow2"), ("vda", f"{OD}/base.qcow2")]}),
     ["holds disk vda of domain clone"]),
    # vmsnapd's own overlay of a cycle in progress is no reason to refuse
    (_host(domain_disks={"web": [("vda", OURS), ("vda", BASE)]}), []),
    (_host(domain_disks={"other": [("vdb", OURS)]}), ["holds disk vdb of domain other"]),
    (_host(managed_mountpoints={"tank/VM": "/tank/VM"}, folder_datasets={"ram_dir": "tank/VM"}),
     ["daemon.ram_dir = /var/lib/vmsnapd/ram: is inside managed dataset tank/VM"]),
    (_host(folders={"overlay_dir": "/tank"}, managed_mountpoints={"tank/VM": "/tank/VM"}),
     ["daemon.overlay_dir = /tank: contains managed dataset tank/VM"]),
    (_host(pool_paths={"default": "/var/lib/libvirt"}), ["daemon.overlay_dir = /var/lib/libvirt/snapshots: is inside "
                                                         "the path of libvirt storage pool default"]),
    (_host(pool_paths={"default": OD}), ["contains the path of libvirt storage pool default"]),
    (_host(pool_paths={"default": "/var/lib/libvirt/images", "iscsi": ""}), []),
    (_host(folders={"overlay_dir": "/"}), ["daemon.overlay_dir = /: must not be /"]),
])
def test_host_folder_problems(host, expect):
    problems = host_folder_problems(host)
    assert len(problems) == len(expect), problems
    for problem, wanted in zip(problems, expect, strict=False):
        assert wanted in problem
