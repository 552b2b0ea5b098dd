"""The ZFS adapter (vmsnapd.zfs) against the lab's zfs-fuse pool: dialect, one listing call, typed errors,
held snapshots, name validation before any argv, dry runs that change nothing."""
from __future__ import annotations


import pytest

from vmsnapd.names import InvalidName
from vmsnapd.runner import Runner
from vmsnapd.zfs import (ZFS_FUSE, DatasetBusy, DatasetNotFound, HasDependents, SnapshotExists, Zfs,
                         ZfsError)

pytestmark = [pytest.mark.lab]

# argv[1] of the zfs/zpool verbs that only read
READ_VERBS = {"list", "get"}


class RecordingRunner(Runner):
    """Runs for real, but records every argv."""

    def __init__(self):
        super().__init__()
        self.calls: list[list[str]] = []

    def run(self, argv, **kw):
        self.calls.append(list(argv))
        return super().run(argv, **kw)

    def changing(self) -> list[list[str]]:
        return [c for c in self.calls if c[1] not in READ_VERBS]


@pytest.fixture
def rec() -> RecordingRunner:
    return RecordingRunner()


@pytest.fixture
def zfs(rec) -> Zfs:
    return Zfs(rec)


def snaps(lab, dataset: str) -> set[str]:
    """Short names of the snapshots of `dataset` itself (not its children)."""
    return set(lab.snapshot_names(dataset))


def test_dialect_is_zfs_fuse_and_detected_once(zfs, rec):
    assert zfs.dialect == ZFS_FUSE
    assert zfs.dialect == ZFS_FUSE
    assert len(rec.calls) == 1


def test_list_tree_is_one_call_with_mountpoints_creation_and_userrefs(lab, pool, dataset_factory, zfs, rec):
    parent = dataset_factory()
    child = dataset_factory(parent.name)
    hidden = dataset_factory(parent.name, mountpoint="none")
    other = dataset_factory()
    lab.snapshot(child, "one")
    lab.snapshot(child, "two")
    lab.snapshot(other, "elsewhere")
    lab.zfs("hold", "keep", f"{child}@two")
    try:
        rec.calls.clear()
        listing = zfs.list_tree([parent.name, f"{pool}/missing-{parent.name.rsplit('/', 1)[1]}"])
        assert len(rec.calls) == 1, rec.calls
    finally:
        lab.zfs("release", "keep", f"{child}@two")
    assert set(listing.datasets) == {parent.name, child.name, hidden.name}
    assert listing.datasets[child.name].mountpoint == str(child.mountpoint)
    assert listing.datasets[hidden.name].mountpoint is None
    assert listing.missing_roots == [f"{pool}/missing-{parent.name.rsplit('/', 1)[1]}"]
    assert {(s.dataset, s.name, s.userrefs) for s in listing.snapshots} == {
        (child.name, "one", 0), (child.name, "two", 1)}
    assert all(s.creation.tzinfo is not None for s in listing.snapshots)


def test_list_tree_sees_real_creation_time(lab, dataset, zfs):
    with lab.faketime("-3d"):
        lab.snapshot(dataset, "old")
    lab.snapshot(dataset, "new")
    by_name = {s.name: s.creation for s in zfs.list_tree([dataset.name]).snapshots}
    age = by_name["new"] - by_name["old"]
    assert 3 * 86400 - 120 <= age.total_seconds() <= 3 * 86400 + 120, age


def test_snapshot_one_and_several(lab, dataset_factory, zfs):
    a, b = dataset_factory(), dataset_factory()
    assert zfs.snapshot([a.name], "single") is True
    assert snaps(lab, a) == {"single"} and snaps(lab, b) == set()
    assert zfs.snapshot([a.name, b.name], "both") is False  # zfs-fuse: one by one, and says so
    assert snaps(lab, a) == {"single", "both"} and snaps(lab, b) == {"both"}


def test_failed_multi_dataset_snapshot_leaves_none_behind(lab, pool, dataset_factory, zfs):
    """OpenZFS takes several names all or nothing; on zfs-fuse the adapter must undo the ones it took."""
    a, b = dataset_factory(), dataset_factory()
    lab.snapshot(b, "clash")
    with pytest.raises(SnapshotExists):
        zfs.snapshot([a.name, b.name], "clash")
    assert snaps(lab, a) == set()
    assert snaps(lab, b) == {"clash"}  # the one that was there before is not ours to undo


def test_snapshot_recursive(lab, dataset_factory, zfs):
    parent = dataset_factory()
    child = dataset_factory(parent.name)
    grandchild = dataset_factory(child.name)
    zfs.snapshot_recursive(parent.name, "tree")
    assert snaps(lab, parent) == snaps(lab, child) == snaps(lab, grandchild) == {"tree"}


def test_destroy_snapshots_skips_held_and_reports_it_busy(lab, dataset, zfs):
    for name in ("a", "b", "c", "d"):
        lab.snapshot(dataset, name)
    lab.zfs("hold", "keep", f"{dataset}@b")
    try:
        failed = zfs.destroy_snapshots(dataset.name, ["a", "b", "c"])
        assert set(failed) == {"b"}
        assert isinstance(failed["b"], DatasetBusy)
        assert snaps(lab, dataset) == {"b", "d"}
    finally:
        lab.zfs("release", "keep", f"{dataset}@b")
    # a snapshot that is already gone is what we wanted, not a failure
    assert zfs.destroy_snapshots(dataset.name, ["a", "b"]) == {}
    assert snaps(lab, dataset) == {"d"}


def test_typed_errors(lab, pool, dataset, zfs):
    lab.snapshot(dataset, "x")
    with pytest.raises(SnapshotExists) as caught:
        zfs.snapshot([dataset.name], "x")
    assert caught.value.target == f"{dataset}@x" and "already exists" in caught.value.stderr_tail
    missing = f"{pool}/no-such-dataset"
    with pytest.raises(DatasetNotFound):
        zfs.snapshot([missing], "x")
    with pytest.raises(DatasetNotFound):
        zfs.get_property(missing, "mountpoint")
    with pytest.raises(DatasetNotFound):
        zfs.clone(dataset.name, "no-such-snapshot", f"{dataset}-clone")
    with pytest.raises(DatasetNotFound):
        zfs.pool_capacity("vlabnosuchpool")
    assert issubclass(DatasetNotFound, ZfsError)


def test_clone_properties_capacity(lab, pool, dataset, zfs):
    lab.snapshot(dataset, "first")
    clone = f"{dataset}-clone"
    zfs.clone(dataset.name, "first", clone, {"mountpoint": "none"})
    try:
        assert lab.zfs("get", "-H", "-o", "value", "origin", clone).strip() == f"{dataset}@first"
        assert zfs.get_property(clone, "mountpoint") == "none"
        with pytest.raises(HasDependents):  # the clone depends on it
            zfs.destroy_snapshot(dataset.name, "first")
        assert snaps(lab, dataset) == {"first"}
    finally:
        lab.destroy_dataset(clone)

    zfs.set_property(dataset.name, "com.example:note", "hello world")
    assert zfs.get_property(dataset.name, "com.example:note") == "hello world"
    assert zfs.get_property(f"{dataset}@first", "userrefs") == "0"
    assert zfs.get_property(f"{dataset}@first", "vmsnapd:backing") == "-"  # unset user property
    zfs.set_property(f"{dataset}@first", "vmsnapd:backing", '[{"path":"/a b\\tc"}]')  # a snapshot's user property
    assert zfs.get_property(f"{dataset}@first", "vmsnapd:backing") == '[{"path":"/a b\\tc"}]'
    capacity = zfs.pool_capacity(pool.name)
    assert isinstance(capacity, int) and 0 <= capacity <= 100


BAD_DATASETS = ["-r", "pool/ds\nx", "pool/ds@x", "a b", "pool//x", "pool/ds/"]
BAD_SNAPNAMES = ["-r", "a\tb", "x@y", "x/y", "x\ny"]


@pytest.mark.parametrize("bad", BAD_DATASETS, ids=repr)
def test_bad_dataset_names_never_reach_argv(lab, dataset, rec, bad):
    zfs = Zfs(rec)
    verbs = [
        lambda: zfs.list_tree([bad]),
        lambda: zfs.list_tree([dataset.name, bad]),
        lambda: zfs.snapshot([bad], "s"),
        lambda: zfs.snapshot([dataset.name, bad], "s"),
        lambda: zfs.snapshot_recursive(bad, "s"),
        lambda: zfs.destroy_snapshot(bad, "s"),
        lambda: zfs.destroy_snapshots(bad, ["s"]),
        lambda: zfs.destroy_snapshots(bad, ["s", "t"]),
        lambda: zfs.clone(bad, "s", f"{dataset}-c"),
        lambda: zfs.clone(dataset.name, "s", bad),
        lambda: zfs.get_property(bad, "mountpoint") if "@" not in bad  # with '@' it names a snapshot
        else zfs.get_property(bad + "@s", "userrefs"),
        lambda: zfs.set_property(bad, "com.example:x", "1") if "@" not in bad  # a snapshot's user property is fine
        else zfs.set_property(bad + "@s", "com.example:x", "1"),
        lambda: zfs.destroy_dataset(bad),
        lambda: zfs.pool_capacity(bad),
    ]
    for i, verb in enumerate(verbs):
        with pytest.raises(InvalidName):
            verb()
        assert rec.calls == [], f"verb #{i} ran {rec.calls} for {bad!r}"


@pytest.mark.parametrize("bad", BAD_SNAPNAMES, ids=repr)
def test_bad_snapshot_names_never_reach_argv(lab, dataset, rec, bad):
    zfs = Zfs(rec)
    verbs = [
        lambda: zfs.snapshot([dataset.name], bad),
        lambda: zfs.snapshot_recursive(dataset.name, bad),
        lambda: zfs.destroy_snapshots(dataset.name, ["ok", bad]),
        lambda: zfs.clone(dataset.name, bad, f"{dataset}-c"),
        lambda: zfs.get_property(f"{dataset}@{bad}", "userrefs"),
    ]
    for i, verb in enumerate(verbs):
        with pytest.raises(InvalidName):
            verb()
        assert rec.calls == [], f"verb #{i} ran {rec.calls} for {bad!r}"


@pytest.mark.parametrize("bad", ["-r", "a b", "x=y", ""], ids=repr)
def test_bad_property_names_never_reach_argv(lab, dataset, rec, bad):
    zfs = Zfs(rec)
    with pytest.raises(InvalidName):
        zfs.get_property(dataset.name, bad)
    with pytest.raises(InvalidName):
        zfs.set_property(dataset.name, bad, "1")
    assert rec.calls == []


def test_dry_run_changes_nothing(lab, dataset_factory, rec):
    ds = dataset_factory()
    lab.snapshot(ds, "keep")
    lab.snapshot(ds, "old")
    before = lab.zfs("get", "-H", "-p", "-r", "-o", "name,property,value", "all", ds.name)
    zfs = Zfs(rec, dry_run=True)
    zfs.snapshot([ds.name], "new")
    zfs.snapshot([ds.name, ds.name + "x"], "new")
    zfs.snapshot_recursive(ds.name, "new")
    assert zfs.destroy_snapshots(ds.name, ["old", "keep"]) == {}
    zfs.destroy_snapshot(ds.name, "old")
    zfs.clone(ds.name, "old", f"{ds}-clone")
    zfs.set_property(ds.name, "com.example:x", "1")
    zfs.destroy_dataset(ds.name, recursive=True)
    assert rec.changing() == [], rec.changing()
    after = lab.zfs("get", "-H", "-p", "-r", "-o", "name,property,value", "all", ds.name)
    assert after == before


class CannedRunner(Runner):
    """Answers `zfs get` with what OpenZFS prints (zvols, which zfs-fuse cannot make); runs nothing."""

    def __init__(self, stdout: str):
        super().__init__()
        self.stdout = stdout
        self.calls: list[list[str]] = []

    def run(self, argv, **kw):
        from vmsnapd.runner import CommandResult
        self.calls.append(list(argv))
        return CommandResult(tuple(argv), 0, self.stdout, "", 1)


def test_list_tree_includes_openzfs_volumes():
    out = "\n".join([
        "rpool/VM\ttype\tfilesystem", "rpool/VM\tcreation\t1700000000", "rpool/VM\tuserrefs\t-",
        "rpool/VM\tmountpoint\tnone", "rpool/VM\tmounted\tno",
        "rpool/VM/db\ttype\tvolume", "rpool/VM/db\tcreation\t1700000001", "rpool/VM/db\tuserrefs\t-",
        "rpool/VM/db\tmountpoint\t-", "rpool/VM/db\tmounted\t-",
        "rpool/VM/db@autosnap_2026-01-01_00:00:00_hourly\ttype\tsnapshot",
        "rpool/VM/db@autosnap_2026-01-01_00:00:00_hourly\tcreation\t1700000002",
        "rpool/VM/db@autosnap_2026-01-01_00:00:00_hourly\tuserrefs\t2",
    ]) + "\n"
    runner = CannedRunner(out)
    listing = Zfs(runner).list_tree(["rpool/VM"])
    assert len(runner.calls) == 1
    assert set(listing.datasets) == {"rpool/VM", "rpool/VM/db"}
    assert listing.datasets["rpool/VM/db"].mountpoint is None
    assert [(s.dataset, s.userrefs) for s in listing.snapshots] == [("rpool/VM/db", 2)]
