"""A linked clone on the lab: the guest's disk is a qcow2 overlay on a template image placed OUTSIDE the managed
dataset (vmsnapd.backing). A snapshot of it is a restore point only while the template stays as it was: `check`
and `status` say so, the cycle warns (logged once), the RAM dump's manifest records the template's size and mtime,
a restore warns when it changed and refuses, before touching anything, when it is gone."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab]

ONE_HOURLY = {"hourly": 3, "daily": 0, "monthly": 0}


def _state(lab, dataset) -> tuple[list[str], list[str]]:
    """The datasets under the pool's dataset tree near `dataset` and its snapshots: a restore would change them."""
    parent = str(dataset).rsplit("/", 1)[0]
    return (sorted(lab.zfs("list", "-H", "-o", "name", "-r", parent).split()),
            sorted(lab.snapshot_names(dataset.name)))


def test_a_disk_on_a_template_outside_the_dataset_is_warned_about_and_its_restore_refused_without_it(
        lab, dataset, vmsnapd_env):
    vm = lab.create_vm(dataset, fmt="qcow2", start=False)
    template = vm.workdir / "template.qcow2"  # the guest's work dir: on no dataset
    lab.run("qemu-img", "create", "-q", "-f", "qcow2", template, "16M")
    lab.run("qemu-img", "create", "-q", "-f", "qcow2", "-b", template, "-F", "qcow2", vm.disk.path)
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name}
    env.run("snapshot", dataset.name)  # shut off: a disk-only snapshot, no RAM dump
    (cold,) = lab.snapshot_names(dataset.name)
    lab.start_vm(vm)
    lab.next_second()

    taken = env.run("snapshot", dataset.name)
    (snap,) = set(lab.snapshot_names(dataset.name)) - {cold}  # a warning, not a refusal
    assert f"warning: disk vda of {vm.name} reads backing file {template}" in taken.stdout, taken.stdout
    assert taken.stderr.count(f"reads backing file {template}") == 1, taken.stderr  # logged once
    (point,) = [p for p in json.loads(env.run("list", vm.name, "--json").stdout) if p["snapshot"] == snap]
    manifest = json.loads(Path(point["ram_dump"].rsplit(".mem", 1)[0] + ".json").read_text())
    st = template.stat()
    assert manifest["backing"] == [{"disk": "vda", "path": str(template), "dataset": None, "size": st.st_size,
                                    "mtime_ns": st.st_mtime_ns}]
    for name in (cold, snap):  # recorded on the snapshots too: the disk-only one has no other record
        recorded = lab.zfs("get", "-H", "-o", "value", "vmsnapd:backing", f"{dataset.name}@{name}")
        assert json.loads(recorded) == manifest["backing"], recorded

    check = env.run("check", expect=1)
    assert check.stdout.startswith("VMSNAPD WARNING") and str(template) in check.stdout, check.stdout
    (entry,) = json.loads(env.run("status", "--json").stdout)["datasets"]
    assert [f["path"] for f in entry["outside_backing"]] == [str(template)]

    os.utime(template, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "changed" (same bytes: the guest is fine)
    for name in (snap, cold):
        plan = env.run("restore", vm.name, name, "--force-stop", expect=10)
        assert f"WARNING: backing file {template} of disk vda changed since the snapshot" in plan.stdout, plan.stdout

    before = _state(lab, dataset)
    template.rename(template.with_suffix(".moved"))  # QEMU keeps its open file: the guest runs on
    refused = env.run("restore", vm.name, snap, "--force-stop", "--yes", expect=1)
    assert f"backing file {template} of disk vda (outside the snapshotted datasets) is missing" in refused.stderr, \
        refused.stderr
    assert "nothing was changed" in refused.stderr
    assert vm.dom.isActive() and _state(lab, dataset) == before  # nothing touched: not stopped, nothing set aside
    gone = env.run("check", expect=2)  # the VM could not start again: CRITICAL
    assert f"{template} (MISSING now" in gone.stdout, gone.stdout
    template.with_suffix(".moved").rename(template)  # the lab reads the guest's disk through its chain
    lab.wait_counter_advances(vm, by=3)
