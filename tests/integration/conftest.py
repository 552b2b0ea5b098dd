"""Fixtures for driving vmsnapd itself (through its CLI, as an admin would) against the lab."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import lab as labmod  # tests/lab/lab.py, put on sys.path by tests/conftest.py


@dataclass
class VmsnapdEnv:
    """A config file plus private state/overlay/RAM directories; `run` calls the CLI with that config."""

    root: Path
    daemon: dict = field(default_factory=dict)
    datasets: dict[str, dict] = field(default_factory=dict)
    templates: dict[str, dict] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.root / "vmsnapd.toml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def overlay_dir(self) -> Path:
        return self.root / "overlay"

    @property
    def ram_dir(self) -> Path:
        return self.root / "ram"

    def write(self) -> Path:
        return labmod.write_vmsnapd_config(self.root, self.datasets, self.templates, self.daemon)

    def run(self, *args: str, expect: int | None = 0, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        self.write()
        proc = subprocess.run([sys.executable, "-m", "vmsnapd", "-c", str(self.config_path), "-v", *args],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        if expect is not None and proc.returncode != expect:
            raise AssertionError(f"vmsnapd {' '.join(args)} exited {proc.returncode}, expected {expect}\n"
                                 f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        return proc

    def snapshot_killed_on_overlay(self, vm: labmod.VM, dataset: str, scratch: Path) -> None:
        """`vmsnapd snapshot DATASET` killed -9 while the guest runs on vmsnapd's overlay (its `zfs snapshot` hangs):
        what a crash mid-cycle leaves — the guest on the overlay, the cycle's record in the journal."""
        wrapper = scratch / "zfs"
        wrapper.write_text('#!/bin/sh\nif [ "$1" = snapshot ]; then sleep 600; fi\nexec /usr/sbin/zfs "$@"\n')
        wrapper.chmod(0o755)
        self.write()
        proc = subprocess.Popen([sys.executable, "-m", "vmsnapd", "-c", str(self.config_path), "snapshot", dataset],
                                env={**os.environ, "PATH": f"{scratch}:{os.environ['PATH']}"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while str(self.overlay_dir) not in vm.dom.XMLDesc(0):
                assert time.monotonic() < deadline, "the cycle never put the VM on an overlay"
                assert proc.poll() is None, "vmsnapd ended before the overlay existed"
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            # vmsnapd runs each command in a session of its own, so the hanging `zfs` wrapper outlives it, as a
            # real child would: end it here, or it would snapshot a dataset of a later test in 10 minutes.
            for pid in subprocess.run(["pgrep", "-f", str(wrapper)], capture_output=True, text=True).stdout.split():
                try:
                    os.killpg(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        assert str(self.overlay_dir) in vm.dom.XMLDesc(0)


@pytest.fixture
def vmsnapd_env(lab) -> VmsnapdEnv:
    env = VmsnapdEnv(root=labmod.make_run_dir("run"))
    yield env
    shutil.rmtree(env.root, ignore_errors=True)


# ------------------------------------------------------------------------------------------ a shared guest
# Booting a TCG guest costs seconds (and its teardown ~1.5 s): tests that each run cycles on a plain running
# counter guest and leave it as they found it share one per module instead of booting their own. Before each test
# the guest is checked (running, every disk on its base file in the live and the persistent definition, no libvirt
# snapshot metadata); a guest a failed test left in another state is replaced by a fresh one, so one failure never
# poisons the next test. Its dataset is handed out with no snapshots and nothing but the guest's disk, and the token
# back at "t0". Between its tests the guest is paused: a TCG guest writing its counter takes CPU from the others.

_SOURCE_RE = re.compile(r"<source file='([^']+)'")


def _sources(xml: str) -> set[str]:
    return set(_SOURCE_RE.findall(xml))


def _as_booted(vm: labmod.VM) -> bool:
    """True when the guest runs (a paused one is resumed) on exactly the disks it was created with."""
    import libvirt

    try:
        dom = vm.dom
        expected = _sources(vm.xml)
        if dom.snapshotNum(0) or _sources(dom.XMLDesc(0)) != expected or \
                _sources(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) != expected:
            return False
        state = dom.state()[0]
        if state == libvirt.VIR_DOMAIN_PAUSED:
            dom.resume()
            state = dom.state()[0]
        if state != libvirt.VIR_DOMAIN_RUNNING:
            return False
        if vm.agent:  # its agent answers and its file system is not left frozen
            labmod.wait_agent(dom)
            return labmod.agent_command(dom, "guest-fsfreeze-status") == "thawed"
        return True
    except (libvirt.libvirtError, AssertionError):
        return False


def _retire(lab, vm: labmod.VM) -> None:
    try:
        lab.destroy_vm(vm)
    except Exception as e:  # noqa: BLE001
        print(f"lab: could not remove shared domain {vm.name}: {e}")
    try:
        lab.destroy_dataset(vm.disk.dataset)
    except lab.LabError as e:
        print(f"lab: dataset {vm.disk.dataset} left for the pool teardown: {e}")


def _clear_dataset(lab, vm: labmod.VM) -> None:
    """No snapshots (nor their clones) and no file but the guest's disks on its dataset."""
    ds = vm.disk.dataset
    for snap in lab.snapshot_names(ds):
        lab.zfs("destroy", "-R", f"{ds}@{snap}")
    keep = {d.path for d in vm.disks} | ({vm.fs_disk.path} if vm.fs_disk else set())
    for entry in ds.mountpoint.iterdir():
        if entry in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _forget_other_tokens(lab, vm: labmod.VM, token: str = "t0") -> None:
    """Zero every record on the counter disk that carries another token than `token`: records an earlier test
    wrote with its own token (a restore's "restored") would otherwise look like this test's RAM-older-than-disk
    evidence (lab.resume_evidence). The guest writes only new sectors meanwhile, all with `token`."""
    fd = os.open(vm.disk.path, os.O_WRONLY)
    try:
        for sector, (_seq, tok) in vm.records().items():
            if tok != token:
                os.pwrite(fd, bytes(lab.SECTOR), sector * lab.SECTOR)
        os.fsync(fd)
    finally:
        os.close(fd)


def _reusable(lab, vm: labmod.VM) -> bool:
    """Running on its own disks, its dataset mounted and cleared (snapshots destroyed, stray files removed)."""
    if not _as_booted(vm):
        return False
    ds = vm.disk.dataset
    try:
        if lab.zfs("get", "-H", "-o", "value", "mounted", str(ds), check=False).strip() != "yes":
            return False
        _clear_dataset(lab, vm)
    except (lab.LabError, OSError) as e:
        print(f"lab: shared guest {vm.name} replaced: its dataset {ds} could not be cleared: {e}")
        return False
    return True


@pytest.fixture(scope="module")
def _shared_guests(lab, pool):
    """The module's shared guests by kind ("plain", "agent"); removed with their datasets at the module's end."""
    guests: dict[str, labmod.VM] = {}
    yield guests
    for vm in guests.values():
        _retire(lab, vm)


def _hand_out(lab, pool, guests: dict, kind: str) -> labmod.VM:
    vm = guests.get(kind)
    if vm is not None and not _reusable(lab, vm):
        _retire(lab, vm)
        vm = None
    if vm is None:
        ds = lab.create_dataset(pool)
        vm = guests[kind] = lab.create_vm(ds, agent=kind == "agent", fs_dataset=ds if kind == "agent" else None)
        # the per-test fixtures (dataset, dataset_factory) remove the domains created during their test
        lab.CREATED_VMS.remove(vm.name)
        if vm.agent:
            labmod.wait_agent(vm.dom)
    lab.write_token(vm, "t0")
    lab.wait_counter_advances(vm, by=3)  # running, and writing records with the token "t0" again
    _forget_other_tokens(lab, vm)
    return vm


def _put_back(lab, vm: labmod.VM) -> None:
    if _reusable(lab, vm):
        vm.dom.suspend()  # no CPU for it while the module's other tests run their own guests (2 cores)


@pytest.fixture
def shared_vm(lab, pool, _shared_guests) -> labmod.VM:
    """A running one-disk counter guest on a dataset of its own (``vm.disk.dataset``), shared by the tests of a
    module that use this fixture: each must leave it running (or paused) on its base disk — else the next test
    gets a fresh guest. Use ``running_vm`` for a test that changes the domain or its dataset otherwise."""
    vm = _hand_out(lab, pool, _shared_guests, "plain")
    yield vm
    _put_back(lab, vm)


@pytest.fixture
def shared_agent_vm(lab, pool, _shared_guests) -> labmod.VM:
    """``shared_vm`` with the guest agent (as ``agent_vm``: ext4 disk ``vm.fs_disk`` mounted at /mnt, here on the
    same dataset as the counter disk); also replaced when a test leaves its file system frozen."""
    vm = _hand_out(lab, pool, _shared_guests, "agent")
    yield vm
    _put_back(lab, vm)
