"""The RAM staging folder on real libvirt (vmsnapd.staging): the fresh RAM file is written to a tmpfs when it has
room for the guest's memory x 1.5 (and moved into ram_dir once the guest runs again), to overlay_dir when not;
a tmpfs that fills up during the capture makes the cycle hold the disks again with the RAM file in overlay_dir;
the restore point made through the tmpfs resumes exactly where the snapshot was taken."""
from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab]

STAGED = "RAM file staged in"
NOT_STAGED = "RAM file in overlay_dir, not in ram_staging_dir"


@contextmanager
def _tmpfs(where: Path, size_mib: int, inodes: int | None = None) -> Iterator[Path]:
    """A tmpfs of `size_mib` MiB (and `inodes` files) mounted on the new folder `where`, unmounted and removed
    afterwards."""
    where.mkdir(mode=0o700)
    options = f"size={size_mib}m,mode=0700" + (f",nr_inodes={inodes}" if inodes else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def _dump_files(ram_dir: Path) -> list[str]:
    return sorted(p.name for p in ram_dir.iterdir()) if ram_dir.is_dir() else []


def test_the_ram_file_is_staged_on_a_tmpfs_with_room_and_resumes_exactly(lab, dataset, vmsnapd_env):
    vm = lab.create_vm(dataset)  # lab.GUEST_MIB (80 MiB) of RAM: the RAM file may need 120 MiB
    env = vmsnapd_env
    env.datasets[dataset.name] = {"hourly": 5, "daily": 0, "monthly": 0, "domain": vm.name, "method": "overlay",
                                  "quiesce": "off", "live": False}
    with _tmpfs(env.root / "small", 64) as small, _tmpfs(env.root / "big", 512) as big, \
            _tmpfs(env.root / "noinode", 512, inodes=2) as starved:
        env.daemon["ram_staging_dir"] = str(small)
        fallback = env.run("snapshot", dataset.name)
        # Room enough, but no inode left once vmsnapd made its folder: libvirt's write fails with ENOSPC.
        env.daemon["ram_staging_dir"] = str(starved / "staging")
        time.sleep(1.1)
        retried = env.run("snapshot", dataset.name)
        time.sleep(1.1)
        env.daemon["ram_staging_dir"] = str(big / "staging")  # created by vmsnapd, 0700
        staged = env.run("snapshot", dataset.name)
        left_in_tmpfs = list((big / "staging").iterdir())
        mode = (big / "staging").stat().st_mode & 0o777

    assert NOT_STAGED in fallback.stderr and "it has 64 MiB free" in fallback.stderr, fallback.stderr
    assert STAGED not in fallback.stderr
    assert f"{STAGED} {starved / 'staging'}" in retried.stderr, retried.stderr
    assert "filled up during the RAM capture" in retried.stderr and "No space left on device" in retried.stderr
    assert f"{STAGED} {big / 'staging'}" in staged.stderr, staged.stderr
    assert left_in_tmpfs == [] and mode == 0o700  # moved into ram_dir, the folder private
    dumps = json.loads(env.run("list", vm.name, "--json").stdout)
    assert len(dumps) == 3 and all(p["ram_dump"] for p in dumps), dumps
    assert not any(p.name.endswith(".mem") for p in env.overlay_dir.iterdir())

    snap = sorted(lab.snapshot_names(dataset.name))[-1]  # the staged one
    at_snapshot = lab.snapshot_max_counter(f"{dataset.name}@{snap}", vm.disk.relpath)
    lab.wait_counter_advances(vm, by=10, start=at_snapshot)
    time.sleep(1.1)
    lab.write_token(vm, "restored")
    proc = env.run("restore", vm.name, snap, "--force-stop", "--yes")
    assert "resumed" in proc.stdout, proc.stdout
    lab.wait_counter_advances(vm, by=10, start=at_snapshot, timeout=30)
    rewritten, first_new = lab.resume_evidence(vm, at_snapshot, "restored")
    assert not rewritten, f"RAM older than the disk: records {rewritten[:5]} rewritten"
    assert first_new == at_snapshot + 1, f"resumed at {first_new}, snapshot max was {at_snapshot}"
