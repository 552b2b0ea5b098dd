"""Trust drill of the replication glue (docs/replication.md) with Debian's syncoid on two lab pools standing for two
hosts: the documented commands replicate a `process_children_only` tree, and after an in-place `vmsnapd restore` on
the source (the source no longer has the backup's newest snapshots) the next run leaves a VM restored on the backup
host alone — plain `syncoid -r` rolls the target back with `zfs rollback -R`, which destroys every clone of the
snapshots it rolls away, i.e. the disks of a restore made there."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import VmsnapdEnv

pytestmark = [pytest.mark.lab]

SHIM = Path(__file__).resolve().parents[1] / "lab" / "zfs_shim.py"
# What docs/replication.md tells to run for the VM tree.
DOCUMENTED = ("--no-sync-snap", "--no-clone-rollback", "-r", "--skip-parent")


def _syncoid(bindir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["syncoid", *args], capture_output=True, text=True, timeout=600, cwd=bindir,
                          env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}",
                               "ZFS_SHIM_LOG": str(bindir / "shim.log")})


def _names(lab, root: str) -> list[str]:
    return lab.zfs("list", "-H", "-o", "name", "-r", root).split()


def test_the_documented_syncoid_run_spares_a_restore_on_the_backup_host_after_the_source_restored(lab):
    pool_a, pool_b = lab.create_pool("1G"), lab.create_pool("1G")
    env = VmsnapdEnv(root=lab.make_run_dir("repdrill"))
    bindir = env.root / "bin"
    bindir.mkdir()
    for tool in ("zfs", "zpool"):  # zfs-fuse lacks what syncoid asks (tests/lab/zfs_shim.py)
        (bindir / tool).symlink_to(SHIM)
    vm = None
    try:
        vm_a, vm_b = f"{pool_a.name}/VM", f"{pool_b.name}/VM"
        lab.zfs("create", vm_a)
        lab.zfs("create", vm_b)  # the target's parent, created once (docs/replication.md)
        name = lab.unique_name("vm")
        dataset = lab.create_dataset(vm_a, name)
        vm = lab.create_vm(dataset, name=name, start=False)
        env.datasets[vm_a] = {"recursive": True, "process_children_only": True, "hourly": 10, "daily": 0,
                              "monthly": 0}
        for _ in range(3):
            env.run("snapshot", dataset.name)
            lab.next_second()
        s1, s2, s3 = lab.snapshot_names(dataset.name)
        replica = f"{vm_b}/{name}"

        # The parent vmsnapd never snapshots (process_children_only) has no snapshot: without --skip-parent,
        # syncoid --no-sync-snap ends CRITICAL (exit 2), and a oneshot unit stops before its RAM dump line.
        plain = _syncoid(bindir, "--no-sync-snap", "-r", vm_a, vm_b)
        assert plain.returncode != 0 and "no snapshots exist on source" in plain.stdout + plain.stderr, plain
        run = _syncoid(bindir, *DOCUMENTED, vm_a, vm_b)
        assert run.returncode == 0, run.stdout + run.stderr
        assert lab.snapshot_names(replica) == [s1, s2, s3]

        # A restore on the backup host clones a received snapshot beside it (docs/replication.md)…
        restored = f"{replica}-restored-20261130T040000"
        lab.zfs("clone", f"{replica}@{s3}", restored)
        # …and the source is restored in place to s1: s2 and s3 go aside with the replaced state.
        proc = env.run("restore", vm.name, s1, "--yes")
        assert "booted" in proc.stdout, proc.stdout
        lab.stop_vm(vm)
        env.run("snapshot", dataset.name)
        (_, s4) = lab.snapshot_names(dataset.name)

        run = _syncoid(bindir, *DOCUMENTED, vm_a, vm_b)
        assert restored in _names(lab, vm_b), f"syncoid destroyed the backup host's restore:\n{run.stdout}{run.stderr}"
        assert lab.zfs("get", "-H", "-o", "value", "origin", restored).strip() == f"{replica}@{s3}"
        assert "clones of previous snapshots exist" in run.stdout + run.stderr, run.stdout + run.stderr
        # The set-aside state travels as a dataset of its own (never managed on either host).
        assert any(".vmsnapd-replaced-" in n for n in _names(lab, vm_b)), _names(lab, vm_b)
        assert s4  # taken after the restore on the source
    finally:
        if vm is not None:
            lab.destroy_vm(vm)
        lab.destroy_pool(pool_a)
        lab.destroy_pool(pool_b)
        shutil.rmtree(env.root, ignore_errors=True)
