"""RAM dumps on ZFS below `[daemon] ram_dataset` (issue 12): one filesystem per dump, snapshotted with the cycle's
names, destroyed exactly when no snapshot of its cycle is left — on the lab, against running counter guests."""
from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab]


def _children(lab, parent: str) -> list[str]:
    out = lab.zfs("list", "-H", "-o", "name", "-r", parent)
    return sorted(line for line in out.split() if line != parent)


def _stamp(name: str) -> str:
    return name[len("autosnap_"):].rsplit("_", 1)[0]


def test_dumps_live_in_snapshotted_filesystems_and_go_with_their_cycle(lab, shared_vm, dataset_factory, vmsnapd_env):
    vm, dataset = shared_vm, shared_vm.disk.dataset
    ram = dataset_factory()
    foreign = lab.create_dataset(ram, "not-a-dump")  # below ram_dataset but not ours: never touched
    env = vmsnapd_env
    env.daemon["ram_dataset"] = ram.name
    env.datasets[dataset.name] = {"hourly": 2, "daily": 0, "monthly": 0, "domain": vm.name}

    check = env.run("config", "check")
    assert "ram_dataset" not in check.stderr, check.stderr  # exists and is mounted: nothing to say

    env.run("snapshot", dataset.name)
    lab.next_second()
    env.run("snapshot", dataset.name)
    snaps = sorted(lab.snapshot_names(dataset.name))
    dumps = [c for c in _children(lab, ram.name) if c != foreign.name]
    assert len(dumps) == 2, dumps
    for dump_ds, snap in zip(dumps, snaps, strict=True):
        assert dump_ds == f"{ram.name}/{vm.name}_{_stamp(snap)}"
        assert lab.snapshot_names(dump_ds) == [snap], "the dump filesystem carries the cycle's snapshot name"
        folder = Path(lab.zfs("get", "-H", "-o", "value", "mountpoint", dump_ds).strip())
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        files = sorted(p.name for p in folder.iterdir())
        assert files == [f"{vm.name}_{_stamp(snap)}.json", f"{vm.name}_{_stamp(snap)}.mem"], files
        for name in files:
            assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
        manifest = json.loads((folder / files[0]).read_text())
        assert manifest["datasets"] == [dataset.name] and manifest["snapshot_names"] == [snap]
        assert manifest["disks"][0]["relpath"] == vm.disk.relpath

    listed = env.run("list", dataset.name, "--json")
    assert listed.stdout.count(".mem") == 2, listed.stdout  # `list` finds the dumps in the filesystems

    # The first cycle loses its snapshot (as retention would destroy it): its dump filesystem goes, no other.
    lab.zfs("destroy", f"{dataset.name}@{snaps[0]}")
    dry = env.run("once", "--prune", "--dry-run")
    assert f"would destroy RAM dump filesystem {dumps[0]}" in dry.stdout + dry.stderr, dry.stdout + dry.stderr
    assert [c for c in _children(lab, ram.name) if c != foreign.name] == dumps
    pruned = env.run("once", "--prune", expect=None)
    left = [c for c in _children(lab, ram.name) if c != foreign.name]
    if dumps[0] in left:  # a shared lab: another guest's QEMU holds the mount (lab.held_by_other_mount_namespace)
        holders = lab.held_by_other_mount_namespace(ram.mountpoint / dumps[0].rsplit("/", 1)[1])
        assert holders and "dataset is busy" in pruned.stdout and pruned.returncode == 1, pruned.stdout
        print(f"note: {dumps[0]} is held by the mount namespace of pid(s) {holders}; prune failed on it as it must")
    else:
        assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert [d for d in left if d != dumps[0]] == dumps[1:]
    assert foreign.name in _children(lab, ram.name)
    assert sorted(lab.snapshot_names(dataset.name)) == snaps[1:]


def test_recover_destroys_the_dump_filesystem_a_killed_cycle_left_empty(lab, shared_vm, dataset_factory, vmsnapd_env):
    """vmsnapd killed (kill -9, by a zstd wrapper first on PATH) while it stores the dump: the cycle's snapshot
    exists, its dump filesystem is empty, its fresh RAM file is still in the staging folder. `recover` destroys that
    filesystem and nothing else below ram_dataset, and deletes the staged RAM file."""
    import os
    import shutil

    vm, dataset = shared_vm, shared_vm.disk.dataset
    ram = dataset_factory()
    foreign = lab.create_dataset(ram, "not-a-dump")
    env = vmsnapd_env
    env.daemon["ram_dataset"] = ram.name
    env.daemon["ram_compression"] = "zstd"
    env.datasets[dataset.name] = {"hourly": 2, "daily": 0, "monthly": 0, "domain": vm.name}
    env.run("snapshot", dataset.name)  # a whole dump beside it: recover leaves it alone
    (kept,) = [c for c in _children(lab, ram.name) if c != foreign.name]
    lab.next_second()
    bindir = lab.make_run_dir("zstdkill")
    (bindir / "zstd").write_text('#!/bin/sh\nkill -9 "$PPID"; exit 1\n')
    (bindir / "zstd").chmod(0o755)
    try:
        proc = env.run("snapshot", dataset.name, expect=None, env={"PATH": f"{bindir}:{os.environ['PATH']}"})
    finally:
        shutil.rmtree(bindir, ignore_errors=True)
    assert proc.returncode == -9, (proc.returncode, proc.stderr)
    snaps = sorted(lab.snapshot_names(dataset.name))
    assert len(snaps) == 2, snaps
    empty = f"{ram.name}/{vm.name}_{_stamp(snaps[1])}"
    assert empty in _children(lab, ram.name)
    staging = env.root / "staging"  # the lab's ram_staging_dir: the killed cycle's fresh RAM file is still there
    (staged,) = staging.glob("*.mem")

    proc = env.run("recover")

    assert f"destroyed dump filesystem {empty}" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert f"deleted {staged}" in proc.stdout + proc.stderr and list(staging.iterdir()) == []
    assert sorted(_children(lab, ram.name)) == sorted([kept, foreign.name])
    assert sorted(lab.snapshot_names(dataset.name)) == snaps and vm.dom.isActive()
