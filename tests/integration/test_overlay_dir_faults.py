"""The overlay method on an overlay_dir vmsnapd cannot write (vmsnapd.qemuimg.create_overlay, vmsnapd.holdstill):
read-only or full, the cycle fails with a message naming the overlay and why, without a traceback, before the guest
is touched — it runs on its base, nothing is left in overlay_dir, the staging folder or the journal."""
from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import libvirt
import pytest

pytestmark = [pytest.mark.lab]

ONE_HOURLY = {"hourly": 1, "daily": 0, "monthly": 0}


@contextmanager
def _small_tmpfs(where: Path) -> Iterator[Path]:
    where.mkdir(mode=0o711, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0711", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize("how", ["read-only", "full"])
def test_an_overlay_dir_that_takes_no_overlay_fails_the_cycle_cleanly(lab, shared_vm, vmsnapd_env, how):
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name, "method": "overlay", "live": True}
    with _small_tmpfs(env.overlay_dir) as overlay_dir:
        if how == "read-only":
            subprocess.run(["mount", "-o", "remount,ro", str(overlay_dir)], check=True)
            said = "Read-only file system"
        else:
            subprocess.run(["dd", "if=/dev/zero", f"of={overlay_dir}/filler", "bs=64k", "count=100"],
                           capture_output=True, check=False)  # fills the 1 MiB tmpfs: dd's ENOSPC is the point
            said = "No space left on device"
        proc = env.run("snapshot", dataset.name, expect=1)
        left = sorted(p.name for p in overlay_dir.iterdir())
    out = proc.stdout + proc.stderr

    assert "Traceback" not in out, out
    assert "cannot create overlay" in proc.stdout and said in proc.stdout, out
    assert left == ([] if how == "read-only" else ["filler"]), left
    assert lab.snapshot_names(dataset.name) == []
    assert not list((env.state_dir / "cycles").iterdir()), "journal record left"
    assert list((env.root / "staging").iterdir()) == [], "RAM file left in the staging folder"
    assert f"'{vm.disk.path}'" in vm.dom.XMLDesc(0) and vm.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    lab.wait_counter_advances(vm, by=3, timeout=30)
