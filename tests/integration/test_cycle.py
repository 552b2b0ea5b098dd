"""The VM-consistent cycle against running counter guests (issue 4).

Each test drives `vmsnapd` through its CLI with a config naming the lab domain, then checks the host:
the zfs snapshot, the domain's disks, overlay_dir, libvirt snapshot metadata, the RAM dump and the
guest's counter. Consistency is proven by restoring: roll back, change the token, resume from the
RAM dump: the counter must continue at exactly snapshot max + 1 with no record rewritten.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import libvirt
import pytest

pytestmark = [pytest.mark.lab]

ONE_HOURLY = {"hourly": 1, "daily": 0, "monthly": 0}


def _dumps(env, domain: str) -> tuple[list[Path], list[Path]]:
    folder = env.ram_dir / domain
    if not folder.exists():
        return [], []
    files = sorted(folder.iterdir())
    return [f for f in files if ".mem" in f.name], [f for f in files if f.suffix == ".json"]


def _assert_vm_back_on_base(lab, vm, env) -> None:
    xml = vm.dom.XMLDesc(0)
    for disk in vm.disks:
        assert f"'{disk.path}'" in xml, f"{disk.target} does not point at its base file any more:\n{xml}"
    assert str(env.overlay_dir) not in xml
    assert list(env.overlay_dir.iterdir()) == [], f"left in overlay_dir: {list(env.overlay_dir.iterdir())}"
    assert vm.dom.snapshotNum(0) == 0, "libvirt snapshot metadata left behind"
    state, _ = vm.dom.state()
    assert state == libvirt.VIR_DOMAIN_RUNNING, f"guest left in state {state}"
    lab.wait_counter_advances(vm, by=5, timeout=30)


def _restore_and_check(lab, vm, dataset: str, snapname: str, memfile: Path) -> None:
    """Rollback + resume from the dump with a new token: the counter continues at exactly max + 1."""
    disk = vm.disks[0]
    vm.dom.destroy()
    lab.zfs("rollback", "-r", f"{dataset}@{snapname}")
    at_snapshot = lab.read_max_counter(disk.path, disk.fmt)
    assert at_snapshot > 0
    lab.write_token(vm, "restored")
    raw = memfile
    if memfile.name.endswith(".zst"):
        raw = memfile.with_name(memfile.name[:-4] + ".restore")
        subprocess.run(["zstd", "-d", "-q", "-f", "-o", str(raw), str(memfile)], check=True)
    try:
        vm.dom.connect().restoreFlags(str(raw), None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
    finally:
        if raw != memfile:
            raw.unlink()
    lab.wait_counter_advances(vm, by=10, start=at_snapshot, timeout=30)
    rewritten, first_new = lab.resume_evidence(vm, at_snapshot, "restored")
    assert not rewritten, f"RAM older than the disk: records {rewritten[:5]} rewritten after restore"
    assert first_new == at_snapshot + 1, f"counter resumed at {first_new}, snapshot max was {at_snapshot}"


@pytest.mark.parametrize("method,live", [("overlay", True), ("overlay", False), ("pause", True), ("pause", False)])
def test_cycle_of_running_vm_is_consistent(lab, shared_vm, vmsnapd_env, method, live):
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.daemon["ram_compression"] = "zstd" if method == "pause" and live else "none"
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name, "method": method, "live": live}

    proc = env.run("snapshot", dataset.name)

    snaps = lab.snapshot_names(dataset.name)
    assert len(snaps) == 1 and snaps[0].endswith("_hourly"), snaps
    assert "pause_ms=" in proc.stderr, proc.stderr
    _assert_vm_back_on_base(lab, vm, env)
    dumps, manifests = _dumps(env, vm.name)
    assert len(dumps) == 1 and len(manifests) == 1, (dumps, manifests)
    stamp = snaps[0][len("autosnap_"):-len("_hourly")]
    assert stamp in dumps[0].name
    assert dumps[0].stat().st_mode & 0o777 == 0o600
    assert (env.ram_dir / vm.name).stat().st_mode & 0o777 == 0o700
    manifest = json.loads(manifests[0].read_text())
    assert manifest["method"] == method and manifest["snapshot_names"] == snaps
    assert manifest["datasets"] == [dataset.name]
    assert manifest["pause_ms"] is not None
    # The domain XML travels inside the dataset.
    assert (dataset.mountpoint / ".vmsnapd" / f"{vm.name}.xml").exists()

    _restore_and_check(lab, vm, dataset.name, snaps[0], dumps[0])


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_overlays_made_by_vmsnapd_are_reused_by_libvirt(lab, vm_factory, vmsnapd_env, tmp_path, fmt):
    """The overlay method's overlay is made by vmsnapd before the guest is touched (docs/how-it-works.md,
    "Pre-created overlays"): while the guest runs on it (seen by a `zfs` wrapper at the snapshot) its header names
    the base file and its format, libvirt runs QEMU on it (owner libvirt-qemu through libvirt's DAC labels), it is
    0600; afterwards the disk is back on its base with its format and the restore continues at exactly max + 1."""
    vm = vm_factory(fmt=fmt)
    dataset = vm.disk.dataset
    env = vmsnapd_env
    env.daemon["ram_compression"] = "none"
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name, "method": "overlay", "live": True}
    seen = tmp_path / "seen"
    wrapper = tmp_path / "zfs"
    wrapper.write_text(f'#!/bin/sh\nif [ "$1" = snapshot ]; then for f in {env.overlay_dir}/*.qcow2; do '
                       f'stat -c "%u %a" "$f" > {seen}.stat; qemu-img info -U --output=json "$f" > {seen}.json; '
                       'done; fi\nexec /usr/sbin/zfs "$@"\n')
    wrapper.chmod(0o755)

    proc = env.run("--debug", "snapshot", dataset.name, env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})

    [flags] = [int(f, 16) for f in re.findall(r"snapshotCreateXML \S+ flags=(0x[0-9a-f]+)", proc.stderr)]
    assert flags & libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT, hex(flags)  # libvirt only opened it
    info = json.loads(Path(f"{seen}.json").read_text())
    assert info["format"] == "qcow2" and info["virtual-size"] == 16 << 20, info  # the lab disks' size
    assert info["backing-filename"] == str(vm.disk.path) and info["backing-filename-format"] == fmt, info
    uid, mode = Path(f"{seen}.stat").read_text().split()
    assert mode == "600" and uid != "0", (uid, mode)  # libvirt gave it to QEMU's user while in use
    snaps = lab.snapshot_names(dataset.name)
    assert len(snaps) == 1
    _assert_vm_back_on_base(lab, vm, env)
    assert f"type='{fmt}'" in vm.dom.XMLDesc(0)
    dumps, _ = _dumps(env, vm.name)
    _restore_and_check(lab, vm, dataset.name, snaps[0], dumps[0])


def test_two_disk_vm_gets_one_name_on_both_datasets(lab, dataset_factory, vmsnapd_env):
    ds_a = dataset_factory()
    ds_b = dataset_factory()
    vm = lab.create_vm([ds_a, ds_b])
    env = vmsnapd_env
    env.datasets[ds_a.name] = {**ONE_HOURLY, "domain": vm.name}
    env.datasets[ds_b.name] = {**ONE_HOURLY, "domain": "none"}

    env.run("snapshot", vm.name)

    snaps_a, snaps_b = lab.snapshot_names(ds_a.name), lab.snapshot_names(ds_b.name)
    assert snaps_a == snaps_b and len(snaps_a) == 1
    # Taken while the guest was frozen: the disks agree. The guest writes each seq to vda, then vdb, so
    # the instant of the freeze may fall between the two writes: vda one ahead, never more, never behind.
    a = lab.snapshot_max_counter(f"{ds_a.name}@{snaps_a[0]}", vm.disks[0].relpath)
    b = lab.snapshot_max_counter(f"{ds_b.name}@{snaps_b[0]}", vm.disks[1].relpath)
    assert b > 0 and a - b in (0, 1), (a, b)
    _assert_vm_back_on_base(lab, vm, env)


def test_shut_off_vm_gets_a_plain_snapshot_and_no_dump(lab, dataset, vmsnapd_env):
    vm = lab.create_vm(dataset)
    lab.stop_vm(vm)
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name}
    env.run("snapshot", dataset.name)
    assert len(lab.snapshot_names(dataset.name)) == 1
    assert _dumps(env, vm.name) == ([], [])
    assert (dataset.mountpoint / ".vmsnapd" / f"{vm.name}.xml").exists()


def test_failed_zfs_snapshot_still_commits_the_overlay(lab, shared_vm, vmsnapd_env, tmp_path):
    """zfs snapshot fails (a wrapper first on PATH) → the VM is committed back, nothing left, exit 1."""
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name}
    wrapper = tmp_path / "zfs"
    wrapper.write_text('#!/bin/sh\nif [ "$1" = snapshot ]; then echo "cannot create snapshot: out of space" >&2; '
                       'exit 1; fi\nexec /usr/sbin/zfs "$@"\n')
    wrapper.chmod(0o755)
    proc = env.run("snapshot", dataset.name, expect=1, env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert "out of space" in proc.stdout + proc.stderr
    assert lab.snapshot_names(dataset.name) == []
    _assert_vm_back_on_base(lab, vm, env)
    assert _dumps(env, vm.name) == ([], [])
    assert list((env.state_dir / "cycles").iterdir()) == []


def test_kill_9_while_on_overlay_is_recovered(lab, shared_vm, vmsnapd_env, tmp_path):
    """vmsnapd killed while the VM runs on its overlay: `once` brings the VM back, counter intact."""
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name}
    env.snapshot_killed_on_overlay(vm, dataset.name, tmp_path)
    before = vm.max_counter()

    proc = env.run("recover")
    assert "committed" in proc.stdout, proc.stdout
    _assert_vm_back_on_base(lab, vm, env)
    assert vm.max_counter() > before
    assert list((env.state_dir / "cycles").iterdir()) == []
    assert "nothing to recover" in env.run("recover").stdout  # idempotent


def test_dry_run_of_a_vm_cycle_touches_nothing(lab, shared_vm, vmsnapd_env):
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name}
    xml_before = vm.dom.XMLDesc(0)
    proc = env.run("once", "--dry-run")
    assert "would" in proc.stdout and "dry-run:" in proc.stderr, proc.stdout + proc.stderr
    assert lab.snapshot_names(dataset.name) == []
    assert not env.ram_dir.exists(), list(env.ram_dir.rglob("*"))
    assert list(env.overlay_dir.iterdir()) == []
    assert not (env.state_dir / "cycles").exists() or list((env.state_dir / "cycles").iterdir()) == []
    assert not (dataset.mountpoint / ".vmsnapd").exists()
    assert vm.dom.XMLDesc(0) == xml_before and vm.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
