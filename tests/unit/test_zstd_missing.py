"""`ram_compression = "zstd"` on a host without zstd (a pip install, a package removed) — drill, session 19. Every
cycle captured the guest's RAM (the capture's pause, a RAM-sized file written) and only then found that it cannot
be compressed: the dump discarded, a disk-only snapshot, every pass. Verify, then act: the RAM store says before
the guest is touched that its compressor is missing, the cycle takes the disk-only snapshot at once (or fails, with
on_memory_failure = "fail"), and the folder check of config check and of every pass says it."""
from __future__ import annotations

import shutil
from pathlib import Path

from fakehost import make_host

from vmsnapd.ramstore import RamStore
from vmsnapd.runner import Runner

SNAP = "tank/web@autosnap_2026-11-29_01:00:00_hourly"


def test_a_missing_zstd_makes_a_disk_only_snapshot_without_capturing_the_ram(tmp_path):
    host = make_host(tmp_path, policy={"quiesce": "off"})
    host.ram_store.zstd_bin = str(tmp_path / "no-such-zstd")

    outcome = host.cycle(compression="zstd")

    assert outcome.ok, outcome.error
    assert any("zstd" in w and "disk-only" in w for w in outcome.warnings), outcome.warnings
    (external,) = host.hv.verbs("snapshot_external")
    assert host.memory_name() not in str(external)  # the RAM was never captured
    assert host.zfs.snapshots == [SNAP] and host.dumps() == [] and host.records() == []


def test_with_on_memory_failure_fail_nothing_is_touched(tmp_path):
    host = make_host(tmp_path, policy={"quiesce": "off", "on_memory_failure": "fail"})
    host.ram_store.zstd_bin = str(tmp_path / "no-such-zstd")

    outcome = host.cycle(compression="zstd")

    assert not outcome.ok and "zstd" in outcome.error, outcome.error
    assert host.hv.verbs("snapshot_external", "snapshot_manual", "suspend") == [] and host.zfs.snapshots == []


def test_compression_problem(tmp_path):
    store = RamStore(tmp_path / "ram", Runner(), zstd_bin=str(tmp_path / "no-such-zstd"))
    assert store.compression_problem("none") is None
    assert "cannot be found" in store.compression_problem("zstd")
    found = shutil.which("zstd") or shutil.which("true")
    assert RamStore(tmp_path / "ram", Runner(), zstd_bin=found).compression_problem("zstd") is None
    assert RamStore(tmp_path / "ram", Runner(), zstd_bin=Path(found).name).compression_problem("zstd") is None


def test_the_folder_check_says_it(tmp_path, monkeypatch):
    from vmsnapd.actions.folders import check_folders

    host = make_host(tmp_path)
    host.config_text = host.config_text.replace("[daemon]\n", '[daemon]\nram_compression = "zstd"\n', 1)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no zstd anywhere on it
    host.hv.storage_pool_paths = dict  # the fake has no storage pools

    result = check_folders(host.context(), host.survey())

    assert result.ok  # said, not fatal: snapshots are still taken, disk-only
    assert any('ram_compression = "zstd", but zstd cannot be found' in n and "disk-only" in n for n in result.notes), \
        result.notes
