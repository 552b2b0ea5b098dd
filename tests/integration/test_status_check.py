"""status / check against the lab, and capacity-aware pruning (prune_defer)."""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

import libvirt
import pytest

from vmsnapd.overlaynames import overlay_file_name

pytestmark = [pytest.mark.lab]

ONLY_HOURLY = {"hourly": 1, "daily": 0, "monthly": 0, "domain": "none"}


def _old_hourly(lab, dataset, hours: int) -> str:
    """An hourly snapshot whose creation really is `hours` old (zfs-fuse's clock moved back)."""
    when = datetime.now(timezone.utc) - timedelta(hours=hours)
    name = f"autosnap_{when:%Y-%m-%d_%H:%M:%S}_hourly"
    lab.set_faketime(f"-{hours}h")
    try:
        lab.snapshot(dataset, name)
    finally:
        lab.reset_faketime()
    return name


def test_check_ok_after_a_pass_and_status_shows_it(lab, dataset, vmsnapd_env):
    env = vmsnapd_env
    env.datasets[dataset.name] = dict(ONLY_HOURLY)
    assert env.run("check", expect=1).stdout.startswith("VMSNAPD WARNING - ")  # no snapshot yet
    env.run("once")
    proc = env.run("check", expect=0)
    assert proc.stdout.startswith("VMSNAPD OK - ") and len(proc.stdout.strip().splitlines()) == 1
    status = json.loads(env.run("status", "--json").stdout)
    (entry,) = [d for d in status["datasets"] if d["dataset"] == dataset.name]
    assert entry["periods"]["hourly"]["count"] == 1 and entry["last_take"]["ok"] is True
    assert status["pools"][dataset.pool] >= 0
    human = env.run("status").stdout
    assert dataset.name in human and f"pool {dataset.pool}:" in human


@pytest.mark.parametrize("hours,expect,word", [(3, 1, "WARNING"), (8, 2, "CRITICAL")])
def test_check_overdue_snapshots(lab, dataset, vmsnapd_env, hours, expect, word):
    env = vmsnapd_env
    env.datasets[dataset.name] = dict(ONLY_HOURLY)
    _old_hourly(lab, dataset, hours)
    proc = env.run("check", expect=expect)
    assert proc.stdout.startswith(f"VMSNAPD {word} - ") and "newest hourly" in proc.stdout, proc.stdout


def test_check_critical_after_a_failed_cycle(lab, dataset, vmsnapd_env):
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONLY_HOURLY, "hooks": {"pre_snapshot": ["/bin/false"]}}
    env.run("once", expect=1)
    proc = env.run("check", expect=2)
    assert "last cycle failed" in proc.stdout


def test_check_critical_for_a_vm_left_on_an_overlay(lab, dataset, vmsnapd_env):
    vm = lab.create_vm(dataset)
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONLY_HOURLY, "domain": vm.name}
    env.run("once")
    assert env.run("check").stdout.startswith("VMSNAPD OK")
    # What a crashed older run leaves without a journal record: the VM writing to one of vmsnapd's overlays
    # forever. (An overlay not named like vmsnapd's is never touched: test_recover_ownership.py.)
    overlay = env.overlay_dir / overlay_file_name(vm.name, "vda", "2026-11-29_01:00:00")
    vm.dom.snapshotCreateXML(
        f"<domainsnapshot><name>handmade</name><memory snapshot='no'/><disks>"
        f"<disk name='vda' snapshot='external'><source file='{overlay}'/></disk>"
        f"<disk name='{vm.token_target}' snapshot='no'/></disks></domainsnapshot>",
        libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY)
    proc = env.run("check", expect=2)
    assert "left on an overlay" in proc.stdout and vm.name in proc.stdout
    assert "ON OVERLAY" in env.run("status").stdout
    env.run("recover")
    assert str(overlay) not in vm.dom.XMLDesc(0) and not overlay.exists()
    assert vm.dom.snapshotNum(0) == 0
    assert env.run("check").stdout.startswith("VMSNAPD OK")


def test_check_unknown_when_zfs_does_not_answer(lab, dataset, vmsnapd_env, tmp_path):
    env = vmsnapd_env
    env.datasets[dataset.name] = dict(ONLY_HOURLY)
    wrapper = tmp_path / "zfs"
    wrapper.write_text("#!/bin/sh\necho 'internal error: failed to initialize ZFS library' >&2\nexit 1\n")
    wrapper.chmod(0o755)
    proc = env.run("check", expect=3, env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert proc.stdout.startswith("VMSNAPD UNKNOWN - ")


def test_prune_defer_waits_for_the_pool_to_fill(lab, dataset, vmsnapd_env):
    env = vmsnapd_env
    for hours in (5, 4, 3):
        _old_hourly(lab, dataset, hours)
    env.datasets[dataset.name] = {**ONLY_HOURLY, "autosnap": False, "prune_defer": 90}
    before = lab.zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", dataset.name).split()
    proc = env.run("once", "--prune")
    assert "deferred" in proc.stderr
    assert lab.zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", dataset.name).split() == before
    env.datasets[dataset.name]["prune_defer"] = 0
    env.run("once", "--prune")
    after = lab.zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", dataset.name).split()
    assert after == before[-1:]
