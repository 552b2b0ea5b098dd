"""Target grouping (vmsnapd.targets.group_targets) from gathered facts: pure, no libvirt, no lab."""

from __future__ import annotations

import pytest

from vmsnapd.config import DatasetPolicy
from vmsnapd.domxml import Disk
from vmsnapd.targets import TargetFacts, VmFacts, group_targets


def policy(name: str, **keys) -> DatasetPolicy:
    return DatasetPolicy(name=name, configured_by=name, **keys)


def disk(target: str, source: str, **flags) -> Disk:
    values = {"kind": "file", "driver_type": "raw", "readonly": False, "shareable": False, "device": "disk", **flags}
    return Disk(target=target, source=source, **values)


WEB, DATA, PLAIN = "tank/VM/web", "tank/VM/web-data", "tank/files"
VDA, VDB = disk("vda", "/tank/VM/web/vda.img"), disk("vdb", "/tank/VM/web-data/vdb.img")
ISO = disk("sda", "/srv/boot.iso", device="cdrom", readonly=True)


def facts(*disks: Disk, where: dict[str, str | None] | None = None, error: str | None = None) -> TargetFacts:
    located = where if where is not None else {VDA.source: WEB, VDB.source: DATA}
    return TargetFacts(domains={"web"}, vms={"web": VmFacts(disks=list(disks), error=error,
                                                            disk_datasets={d.source: located.get(d.source)
                                                                           for d in disks})})


def summary(targets) -> list[tuple]:
    return [(t.name, t.domain, t.datasets, [d.target for d in t.disks], t.skipped_disks, t.error) for t in targets]


def test_a_vm_takes_in_the_datasets_of_its_disks() -> None:
    policies = {WEB: policy(WEB), DATA: policy(DATA), PLAIN: policy(PLAIN)}
    assert summary(group_targets(policies, facts(VDA, VDB, ISO))) == [
        (WEB, "web", [WEB, DATA], ["vda", "vdb"], ["sda"], None),
        (PLAIN, None, [PLAIN], [], [], None),
    ]


@pytest.mark.parametrize(("policies", "gathered", "expected"), [
    # no domain of that name: "auto" falls back to plain snapshots
    ({WEB: policy(WEB)}, TargetFacts(), [(WEB, None, [WEB], [], [], None)]),
    # "none": plain, whatever exists
    ({WEB: policy(WEB, domain="none")}, facts(VDA), [(WEB, None, [WEB], [], [], None)]),
    # a named domain that does not exist: the target fails, it is not silently plain
    ({WEB: policy(WEB, domain="db")}, facts(VDA),
     [(WEB, "db", [WEB], [], [], f"domain db (named by {WEB}) does not exist")]),
    # a writable disk on an unmanaged dataset is an error ...
    ({WEB: policy(WEB)}, facts(VDA, VDB),
     [(WEB, "web", [WEB], ["vda"], [], "disk vdb (/tank/VM/web-data/vdb.img) is writable but on no managed "
                                        "dataset; manage its dataset or list it in exclude_disks")]),
    # ... unless excluded
    ({WEB: policy(WEB, exclude_disks=["vdb"])}, facts(VDA, VDB), [(WEB, "web", [WEB], ["vda"], ["vdb"], None)]),
    # libvirt could not read the disks: the reason, nothing captured
    ({WEB: policy(WEB)}, facts(VDA, error="domain vanished"), [(WEB, "web", [WEB], [], [], "domain vanished")]),
    # two datasets naming the same VM: one target
    ({WEB: policy(WEB), DATA: policy(DATA, domain="web")}, facts(VDA),
     [(WEB, "web", [WEB, DATA], ["vda"], [], None)]),
    # shared and read-only disks are never captured
    ({WEB: policy(WEB)}, facts(VDA, disk("vdc", "/x.img", shareable=True), disk("vdd", "/y.img", readonly=True)),
     [(WEB, "web", [WEB], ["vda"], ["vdc", "vdd"], None)]),
])
def test_grouping(policies: dict, gathered: TargetFacts, expected: list) -> None:
    assert summary(group_targets(policies, gathered)) == expected


def test_a_dataset_holding_disks_of_two_vms_fails_both_before_anything_is_touched() -> None:
    db, db_vda, db_vdb = "tank/VM/db", disk("vda", "/tank/VM/db/vda.img"), disk("vdb", "/tank/VM/web/db-vdb.img")
    gathered = TargetFacts(domains={"web", "db"}, vms={
        "web": VmFacts(disks=[VDA], disk_datasets={VDA.source: WEB}),
        "db": VmFacts(disks=[db_vda, db_vdb], disk_datasets={db_vda.source: db, db_vdb.source: WEB})})
    problem = (f"dataset {WEB} holds disks of several VMs (db, web): one snapshot of it cannot be each VM's own "
               "instant; give each VM's disks a dataset of their own")
    assert summary(group_targets({WEB: policy(WEB), db: policy(db), PLAIN: policy(PLAIN)}, gathered)) == [
        (WEB, "web", [WEB], ["vda"], [], problem),
        (db, "db", [db, WEB], ["vda", "vdb"], [], problem),
        (PLAIN, None, [PLAIN], [], [], None),
    ]
