"""Fault paths of the ZFS RAM store (vmsnapd.ramdataset) with a fake zfs: nothing is made in place of a missing
ram_dataset, and a half-made dump filesystem is destroyed again. The store itself is proven on the lab
(tests/integration/test_ram_dataset.py, test_replication.py)."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from vmsnapd.ramdataset import RamDatasetStore
from vmsnapd.ramstore import RamDumpInfo, RamStoreError
from vmsnapd.zfs import DatasetInfo, ZfsError, ZfsListing

NOW = datetime(2026, 11, 30, tzinfo=timezone.utc)


class FakeZfs:
    def __init__(self, mountpoint: Path | None, fail_snapshot: bool = False):
        self.mountpoint, self.fail_snapshot = mountpoint, fail_snapshot
        self.created, self.destroyed = [], []

    def list_tree(self, roots):
        listing = ZfsListing()
        if self.mountpoint is None:
            listing.missing_roots = list(roots)
        else:
            listing.datasets["tank/ram"] = DatasetInfo("tank/ram", str(self.mountpoint), NOW)
        return listing

    def create(self, dataset, properties=None):
        self.created.append(dataset)
        (self.mountpoint / dataset.rsplit("/", 1)[1]).mkdir()

    def get_property(self, target, prop):
        if prop == "mounted":
            return "yes"
        return str(self.mountpoint / target.rsplit("/", 1)[1]) if target.startswith("tank/ram/") else "-"

    def snapshot(self, datasets, name):
        if self.fail_snapshot:
            raise ZfsError("out of space", datasets[0])
        return True

    def destroy_dataset(self, dataset, recursive=False, force=False):
        self.destroyed.append(dataset)


def info() -> RamDumpInfo:
    return RamDumpInfo(domain="web", stamp="2026-11-30_00:00:00", datasets=["tank/VM/web"],
                       snapshot_names=["autosnap_2026-11-30_00:00:00_hourly"], domain_xml="<domain/>",
                       method="overlay", live=True, quiesced=False)


def test_a_missing_ram_dataset_is_an_error_and_nothing_is_made_in_its_place(tmp_path):
    store = RamDatasetStore("tank/ram", FakeZfs(None), runner=None)
    with pytest.raises(OSError, match="does not exist or is not mounted"):
        store.folder_for("web")
    fresh = tmp_path / "fresh.mem"
    fresh.write_bytes(b"ram")
    with pytest.raises(RamStoreError):
        store.keep(fresh, info(), "none")
    assert fresh.exists() and store.dumps() == [] and not store.ram_dir.exists()


def test_a_failed_snapshot_destroys_the_half_made_dump_filesystem(tmp_path):
    root = tmp_path / "ram"
    root.mkdir()
    zfs = FakeZfs(root, fail_snapshot=True)
    store = RamDatasetStore("tank/ram", zfs, runner=None)
    fresh = tmp_path / "fresh.mem"
    fresh.write_bytes(b"ram")
    with pytest.raises(RamStoreError, match="out of space"):
        store.keep(fresh, info(), "none")
    assert zfs.created == zfs.destroyed == ["tank/ram/web_2026-11-30_00:00:00"]
