"""The RAM store's surroundings on real libvirt (drill, session 19; the logic: tests/unit/test_ram_capture_full.py).

overlay_dir fills up during the RAM capture — it had room when checked, but no inode is left once vmsnapd made the
folder (a tmpfs with nr_inodes=2: the way test_staging_tmpfs.py fills its staging folder), so libvirt's write of
the RAM file fails with "No space left on device". With `on_memory_failure = "disk-only"` (the default) the cycle
takes a disk-only snapshot with a warning and the guest runs on; it used to fail with no snapshot at all."""
from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import libvirt
import pytest

pytestmark = [pytest.mark.lab]


@contextmanager
def _tmpfs(where: Path, size_mib: int, inodes: int) -> Iterator[Path]:
    where.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0711,nr_inodes={inodes}", "tmpfs",
                    str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def test_overlay_dir_full_during_the_capture_gives_a_disk_only_snapshot(lab, shared_vm, vmsnapd_env):
    """Method "pause" (the VM groups' method): overlay_dir holds only the RAM file. (With the overlay method the
    tmpfs trick also starves the overlay's own xattrs — libvirt's "Unable to set XATTR …: No space left on device",
    a full overlay_dir for the disks too, which fails the cycle, rightly; the RAM-only case of the overlay method is
    in the unit test.)"""
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {"hourly": 1, "daily": 0, "monthly": 0, "domain": vm.name, "method": "pause",
                                  "quiesce": "off"}
    env.daemon["ram_staging_dir"] = ""  # no staging: the RAM file goes to overlay_dir
    with _tmpfs(env.root / "full", 512, 2) as full:  # the tmpfs's root and vmsnapd's folder: no inode left
        env.daemon["overlay_dir"] = str(full / "overlay")
        proc = env.run("snapshot", dataset.name)
        left = sorted(p.name for p in (full / "overlay").iterdir())

    assert "filled up during the RAM capture" in proc.stderr and "No space left on device" in proc.stderr, \
        proc.stderr
    assert "disk-only" in proc.stdout + proc.stderr
    assert len(lab.snapshot_names(dataset.name)) == 1
    points = json.loads(env.run("list", vm.name, "--json").stdout)
    assert len(points) == 1 and not points[0]["ram_dump"], points
    assert left == []
    assert not (env.state_dir / "cycles").exists() or not any((env.state_dir / "cycles").iterdir())
    assert vm.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    lab.wait_counter_advances(vm, by=3)


def test_ram_compression_zstd_without_zstd_takes_a_disk_only_snapshot_without_capturing(lab, shared_vm, vmsnapd_env,
                                                                                        tmp_path):
    """No zstd on PATH (a pip install, a package removed): said by `config check`, and the cycle takes its disk-only
    snapshot without capturing the RAM first (it captured it, then threw it away, every pass)."""
    import shutil

    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {"hourly": 1, "daily": 0, "monthly": 0, "domain": vm.name, "method": "pause",
                                  "quiesce": "off"}
    env.daemon["ram_compression"] = "zstd"
    bin_dir = tmp_path / "bin"  # what a cycle runs, and no zstd
    bin_dir.mkdir()
    for tool in ("zfs", "zpool", "qemu-img"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    path = {"PATH": str(bin_dir)}

    check = env.run("config", "check", env=path)
    proc = env.run("snapshot", dataset.name, env=path)

    assert 'ram_compression = "zstd", but zstd cannot be found' in check.stdout + check.stderr, check
    assert "zstd cannot be found" in proc.stdout and "disk-only" in proc.stdout, proc.stdout
    assert "RAM dump could not be stored" not in proc.stdout + proc.stderr  # never captured, so never thrown away
    assert len(lab.snapshot_names(dataset.name)) == 1
    assert not (env.ram_dir / vm.name).exists() or not any((env.ram_dir / vm.name).iterdir())
    assert vm.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
