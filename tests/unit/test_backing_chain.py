"""Backing files outside the snapshot (vmsnapd.backing): reading a disk's chain (any qemu-img output gives a list or
a typed error), which files are outside a VM's datasets, the warnings of check and of the cycle, what the RAM
manifest records, and the restore's verdict. The real thing on the lab: tests/integration/test_backing_outside.py."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from fakehost import STAMP, make_host
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmsnapd.actions.restore import RestoreFacts, RestoreFailed, decide
from vmsnapd.actions.take import _targets, run_cycles
from vmsnapd.backing import (BACKING_PROPERTY, MAX_PROPERTY_VALUE, BackingFile, ChainFile, backing_property,
                             judge_restore, outside_backing, parse_backing_property)
from vmsnapd.hvtypes import HypervisorError
from vmsnapd.monitoring import DatasetFacts, State, plan_check
from vmsnapd.qemuimg import MAX_CHAIN, QemuImg, parse_backing_chain
from vmsnapd.runner import CommandError, CommandResult
from vmsnapd.targets import log_warnings_once, read_backing

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = st.sampled_from(["full-backing-filename", "backing-filename", "filename", "format"])
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.sampled_from(["/t.qcow2", "t.qcow2", "/a\0b"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS | st.text(max_size=4), inner, max_size=3),
    max_leaves=10)


# -- the parser: any output, a list of absolute paths or a HypervisorError naming the image ---------------------

@FUZZ
@given(out=values.map(json.dumps) | st.text(max_size=40))
def test_any_qemu_img_output_gives_a_chain_or_a_typed_error(out):
    try:
        chain = parse_backing_chain(out, "/tank/web/vda.qcow2")
    except HypervisorError as exc:
        assert str(exc).startswith("/tank/web/vda.qcow2")
        return
    assert all(p.startswith("/") and "\0" not in p for p in chain)


def test_a_chain_is_read_nearest_first_and_ends_at_the_first_image_without_backing():
    out = json.dumps([{"filename": "vda.qcow2", "backing-filename": "../t1.qcow2", "full-backing-filename": "/i/t1.qcow2"},
                      {"filename": "/i/t1.qcow2", "full-backing-filename": "/i/t0.qcow2"},
                      {"filename": "/i/t0.qcow2", "format": "raw"}])
    assert parse_backing_chain(out, "/x/vda.qcow2") == ["/i/t1.qcow2", "/i/t0.qcow2"]
    assert parse_backing_chain(json.dumps({"filename": "a", "full-backing-filename": "/i/t1.qcow2"}), "/a") == [
        "/i/t1.qcow2"]  # without --backing-chain: one object
    assert parse_backing_chain(json.dumps([{"filename": "a"}]), "/a") == []
    with pytest.raises(HypervisorError, match="unusable backing file"):
        parse_backing_chain(json.dumps([{"backing-filename": "relative.qcow2"}]), "/a")
    with pytest.raises(HypervisorError, match="no readable JSON"):
        parse_backing_chain("[" * 100_000, "/a")


class ScriptedRunner:
    """qemu-img as a table: path → backing file ("" none); --backing-chain fails when `whole` is False."""

    def __init__(self, backing: dict[str, str], whole: bool = True):
        self.backing, self.whole, self.argvs = backing, whole, []

    def run(self, argv, *, timeout=None, **_):
        self.argvs.append(list(argv))
        path = argv[-1]
        if path not in self.backing or ("--backing-chain" in argv and not self.whole):
            raise CommandError(list(argv), f"qemu-img: Could not open '{path}'", 1)
        info = {"filename": path, **({"full-backing-filename": self.backing[path]} if self.backing[path] else {})}
        return CommandResult(tuple(argv), 0, json.dumps(info), "", 1)


def test_a_chain_with_a_missing_file_is_walked_up_to_it(tmp_path):
    gone = str(tmp_path / "template.qcow2")  # named by the overlay, not there
    runner = ScriptedRunner({"/tank/web/vda.qcow2": gone}, whole=False)
    assert QemuImg(runner).backing_chain("/tank/web/vda.qcow2") == [gone]
    assert runner.argvs[0][:3] == ["qemu-img", "info", "--backing-chain"] and "-U" in runner.argvs[0]


def test_an_unreadable_disk_or_a_looping_chain_is_a_typed_error(tmp_path):
    with pytest.raises(HypervisorError, match="cannot read the backing chain of /nothing"):
        QemuImg(ScriptedRunner({}, whole=False)).backing_chain("/nothing")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    Path(a).touch()
    Path(b).touch()
    with pytest.raises(HypervisorError, match=f"longer than {MAX_CHAIN}"):
        QemuImg(ScriptedRunner({a: b, b: a}, whole=False)).backing_chain(a)


# -- which files are outside ---------------------------------------------------------------------------------

def test_only_files_on_none_of_the_vms_datasets_are_outside():
    chains = {"/tank/web/vda.qcow2": [ChainFile("/tank/web/base.qcow2", "tank/web"),
                                      ChainFile("/tank/tpl/t.qcow2", "tank/tpl", 5, 7),
                                      ChainFile("/var/lib/libvirt/images/t0.img", None, 9, 1)],
              "/tank/web/vdb.qcow2": []}
    found = outside_backing([("vda", "/tank/web/vda.qcow2"), ("vdb", "/tank/web/vdb.qcow2")], chains, ["tank/web"])
    assert [(f.disk, f.path, f.dataset) for f in found] == [("vda", "/tank/tpl/t.qcow2", "tank/tpl"),
                                                            ("vda", "/var/lib/libvirt/images/t0.img", None)]
    assert outside_backing([("vda", "/tank/web/vda.qcow2")], chains, ["tank/web", "tank/tpl"])[0].dataset is None


# -- planning, the cycle, check ------------------------------------------------------------------------------

def _linked_clone(tmp_path: Path):
    """The fake host's VM web on a qcow2 disk whose template is outside tank/web."""
    host = make_host(tmp_path)
    disk = tmp_path / "tank" / "web" / "web-vda.qcow2"
    disk.write_bytes(b"overlay")
    template = tmp_path / "images" / "template.qcow2"
    template.parent.mkdir()
    template.write_bytes(b"template")
    host.hv.add("web", {"vda": str(disk)})
    host.hv.backing[str(disk)] = str(template)
    return host, template


def test_a_cycle_of_a_linked_clone_warns_logs_once_and_records_the_template(tmp_path, caplog):
    host, template = _linked_clone(tmp_path)
    ctx, survey = host.context(), host.survey()
    (target,) = _targets(ctx, survey)
    assert target.backing == [] and target.warnings == []  # planning alone reads no chain (a qemu-img per disk)
    with caplog.at_level(logging.WARNING, logger="vmsnapd.targets"):
        for _pass in range(2):  # a second pass of the same process: said once
            read_backing([target], host.hv, survey.listing)
            log_warnings_once([target])
    assert target.error is None and [f.path for f in target.backing] == [str(template)]
    assert [r.getMessage() for r in caplog.records].count(f"web: {target.warnings[0]}") == 1
    assert f"disk vda of web reads backing file {template}" in target.warnings[0]
    assert "virsh blockpull web vda" in target.warnings[0] and "qemu-img convert" in target.warnings[0]

    (outcome,) = run_cycles(ctx, survey, [(target, ["hourly"])], STAMP)
    assert outcome.ok and outcome.warnings[0] == target.warnings[0]
    (dump,) = ctx.ram_store.dumps()
    st = template.stat()
    assert [(b.disk, b.path, b.size, b.mtime_ns) for b in dump.manifest.backing] == [
        ("vda", str(template), st.st_size, st.st_mtime_ns)]


def test_an_unreadable_chain_is_a_warning_and_stops_no_cycle(tmp_path):
    host, _ = _linked_clone(tmp_path)
    host.hv.fail("backing_chain", HypervisorError("qemu-img: Could not open"))
    ctx, survey = host.context(), host.survey()
    (target,) = _targets(ctx, survey)
    read_backing([target], host.hv, survey.listing)
    assert target.error is None and target.unknown_chains == {"vda": "qemu-img: Could not open"}
    assert target.warnings == ["cannot tell whether disk vda of web depends on a file outside its snapshotted "
                               "datasets: qemu-img: Could not open"]


def test_check_warns_per_disk_concerned_and_is_critical_when_the_file_is_gone(tmp_path):
    host, _ = _linked_clone(tmp_path)
    policy = host.survey().policies["tank/web"]
    there = [BackingFile(disk="vda", path="/i/t1.qcow2", size=1, mtime_ns=1),
             BackingFile(disk="vda", path="/i/t0.qcow2", size=1, mtime_ns=1),
             BackingFile(disk="vdb", path="/i/t0.qcow2", size=1, mtime_ns=1)]
    result = plan_check(check_facts(policy, there), STAMP)
    assert result.state == State.WARNING and [f.state for f in result.findings] == [State.WARNING] * 2
    assert result.findings[0].text.startswith("tank/web: disk vda of web reads backing file /i/t1.qcow2, /i/t0.qcow2")
    gone = plan_check(check_facts(policy, [there[0].model_copy(update={"size": None})]), STAMP)
    assert gone.state == State.CRITICAL and "/i/t1.qcow2 (MISSING now" in gone.summary
    unknown = plan_check(check_facts(policy, [], ["cannot tell whether disk vda of web depends …"]), STAMP)
    assert unknown.state == State.WARNING and "cannot tell whether" in unknown.summary
    assert plan_check(check_facts(policy, []), STAMP).state == State.OK


def check_facts(policy, files, unknown=()):
    from vmsnapd.monitoring import CheckFacts

    return CheckFacts(configured_tables=1, datasets=[DatasetFacts(policy=policy, domain="web", newest={
        "hourly": STAMP}, outside_backing=files, backing_unknown=list(unknown))])


def test_status_shows_it_on_the_dataset_holding_the_disk(tmp_path):
    from vmsnapd.actions.status import _backing, _targets

    host, template = _linked_clone(tmp_path)
    problems: list[str] = []
    survey = host.survey()
    found = _backing(survey, host.hv, _targets(survey, host.hv, problems), problems)
    assert [f.path for f in found["tank/web"].files] == [str(template)] and not problems and not found[
        "tank/web"].unknown


# -- restore -------------------------------------------------------------------------------------------------

SNAP = "autosnap_2026-11-29_01:00:00_hourly"
TEMPLATE = "/var/lib/libvirt/images/template.qcow2"


def restore_facts(now: ChainFile | None, recorded: BackingFile) -> RestoreFacts:
    return RestoreFacts(domain="web", datasets=["tank/web"], vm_state="shutoff", snapshots={"tank/web": [SNAP]},
                        existing={"tank", "tank/web"}, backing=[recorded],
                        backing_now={TEMPLATE: now} if now else {})


def _decide(facts: RestoreFacts, clone: str | None = None):
    return decide(facts, SNAP, clone=clone, no_memory=False, force_stop=False, stamp="20261130T010203")


RECORDED = BackingFile(disk="vda", path=TEMPLATE, size=100, mtime_ns=5)


@pytest.mark.parametrize("clone", [None, "web2"])
@pytest.mark.parametrize("now", [None, ChainFile(TEMPLATE, None)])  # not looked at / not there
def test_a_restore_whose_backing_file_is_gone_is_refused_naming_it(now, clone):
    with pytest.raises(RestoreFailed, match=f"backing file {TEMPLATE} of disk vda .* is missing.*nothing was changed"):
        _decide(restore_facts(now, RECORDED), clone)


def test_a_changed_backing_file_is_a_loud_warning_an_unchanged_one_verified():
    changed = _decide(restore_facts(ChainFile(TEMPLATE, None, 100, 6), RECORDED))
    assert changed.warnings and changed.warnings[0].startswith(f"WARNING: backing file {TEMPLATE} of disk vda "
                                                               "changed since the snapshot")
    same = _decide(restore_facts(ChainFile(TEMPLATE, None, 100, 5), RECORDED))
    assert not same.warnings and any("unchanged since the snapshot" in v for v in same.verified)
    unrecorded = judge_restore([RECORDED.model_copy(update={"size": None, "mtime_ns": None})],
                               {TEMPLATE: ChainFile(TEMPLATE, None, 1, 1)})
    assert not unrecorded.changed and "present only" in unrecorded.verified[0]


# -- the record on the snapshots (BACKING_PROPERTY): a restore point without a RAM dump checks it too --------------

backing_files = st.lists(st.builds(BackingFile, disk=st.text(max_size=6), path=st.text(max_size=40),
                                   dataset=st.none() | st.text(max_size=10),
                                   size=st.none() | st.integers(0, 2**63), mtime_ns=st.none() | st.integers(0, 2**63)),
                         max_size=150)


@FUZZ
@given(files=backing_files)
def test_the_record_reads_back_as_written_and_is_safe_in_a_zfs_property(files):
    value = backing_property(files)
    if value is None:  # too long for ZFS: not recorded, said so by the cycle
        assert len(json.dumps([f.model_dump() for f in files], separators=(",", ":"))) > MAX_PROPERTY_VALUE
        return
    assert len(value) <= MAX_PROPERTY_VALUE and value.isascii() and value.isprintable()  # no tab, newline, NUL
    assert parse_backing_property(value) == files


@FUZZ
@given(value=values.map(json.dumps) | st.text(max_size=60))
def test_any_property_value_is_a_record_none_or_a_clear_error(value):
    try:
        recorded = parse_backing_property(value)
    except ValueError as exc:
        assert str(exc).startswith("vmsnapd:backing is not a record of backing files")
    else:
        assert recorded is None or all(isinstance(f, BackingFile) for f in recorded)


@pytest.mark.parametrize("state", ["running", "shutoff"])  # the RAM dump's path and the plain one
def test_every_snapshot_of_a_linked_clone_records_its_backing_files(tmp_path, state):
    host, template = _linked_clone(tmp_path)
    if state == "shutoff":
        host.hv.shut_off("web")
    outcome = host.cycle(("hourly", "daily"))
    assert outcome.ok, outcome.error
    st_ = template.stat()
    expected = [BackingFile(disk="vda", path=str(template), size=st_.st_size, mtime_ns=st_.st_mtime_ns)]
    assert sorted(snap for snap, prop in host.zfs.properties) == sorted(host.zfs.snapshots) and len(
        host.zfs.snapshots) == 2
    assert all(parse_backing_property(v) == expected for v in host.zfs.properties.values())


def test_no_record_without_outside_backing_files_or_in_a_dry_run(tmp_path):
    plain = make_host(tmp_path / "plain")
    assert plain.cycle().ok and plain.zfs.snapshots and plain.zfs.properties == {}
    host, _ = _linked_clone(tmp_path / "clone")
    assert host.cycle(dry_run=True).ok and host.zfs.properties == {}


def test_a_record_that_cannot_be_set_is_a_warning_and_the_snapshot_and_dump_stay(tmp_path):
    from vmsnapd.zfs import ZfsError

    host, _ = _linked_clone(tmp_path)
    host.zfs.fail("set_property", ZfsError("cannot set property: permission denied"))
    outcome = host.cycle()
    assert outcome.ok and host.zfs.snapshots and host.dumps()
    assert any(w.startswith("vmsnapd:backing not recorded on tank/web@autosnap_") and "permission denied" in w
               for w in outcome.warnings), outcome.warnings


def test_a_restore_of_a_snapshot_without_ram_dump_warns_when_the_recorded_template_changed(tmp_path):
    from vmsnapd.actions.restore import plan_restore

    host, template = _linked_clone(tmp_path)
    host.hv.shut_off("web")
    assert host.cycle().ok and host.dumps() == []
    (snap,) = host.zfs.snapshots

    def plan():
        return plan_restore(host.context(), "web", snap, clone=None, no_memory=False, force_stop=False)

    assert not plan().warnings
    st_ = template.stat()
    os.utime(template, ns=(st_.st_atime_ns, st_.st_mtime_ns + 10**9))
    (warning,) = plan().warnings
    assert warning.startswith(f"WARNING: backing file {template} of disk vda changed since the snapshot")
    del host.zfs.properties[(snap, BACKING_PROPERTY)]
    # Set on the dataset by hand: the snapshot inherits it, but it is no cycle's record (else: "changed" below).
    host.zfs.set_property("tank/web", BACKING_PROPERTY, backing_property([BackingFile(
        disk="vda", path=str(template), size=1, mtime_ns=1)]))
    assert not plan().warnings  # unrecorded: the current chain's file is checked for presence only
    host.zfs.properties[(snap, BACKING_PROPERTY)] = "{not json"
    (warning,) = plan().warnings  # the current chain is still checked for presence
    assert warning.startswith(f"the backing files recorded on {snap} cannot be read (vmsnapd:backing is not")
    template.unlink()
    with pytest.raises(RestoreFailed, match=f"backing file {template} of disk vda .* is missing"):
        plan()


def test_the_adapter_sets_and_reads_a_snapshot_property_and_refuses_a_bad_name():
    from vmsnapd.names import InvalidName
    from vmsnapd.runner import Runner
    from vmsnapd.zfs import Zfs

    class Recording(Runner):
        def __init__(self):
            super().__init__()
            self.argvs = []

        def run(self, argv, **kwargs):
            self.argvs.append(list(argv))
            return CommandResult(tuple(argv), 0, "-\n", "", 1)

    runner = Recording()
    zfs = Zfs(runner)
    zfs.set_property("tank/web@autosnap_x", BACKING_PROPERTY, "[]")
    assert zfs.get_property("tank/web@autosnap_x", BACKING_PROPERTY) == "-"
    assert runner.argvs == [["zfs", "set", "vmsnapd:backing=[]", "tank/web@autosnap_x"],
                            ["zfs", "get", "-H", "-p", "-o", "value", "vmsnapd:backing", "tank/web@autosnap_x"]]
    for bad in ("tank/web@a/b", "tank/web@", "-o@x", "tank/web@a@b"):
        with pytest.raises(InvalidName):
            zfs.set_property(bad, BACKING_PROPERTY, "[]")
