"""Recovery touches only what vmsnapd made (issue 8, Build 2 and its Must-hold), against the lab.

- overlay_dir set to the folder of a shut-off UNMANAGED domain's qcow2 linked clone: `config check` fails and
  names the folder; a config that slipped through (edited after the check) makes `once` refuse before it touches
  anything; and even with the folder check bypassed (the pass path called directly), recovery and a VM cycle
  in that folder leave the clone and its base byte for byte unchanged.
- A managed domain whose persistent definition alone still names one of vmsnapd's overlays is repaired (next
  boot from its base); an unmanaged domain in the same state is only reported.
- A foreign (hand-named) overlay in overlay_dir is refused by `config check` and never touched by `recover`.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from vmsnapd.overlaynames import overlay_file_name

pytestmark = [pytest.mark.lab]

ONE_HOURLY = {"hourly": 1, "daily": 0, "monthly": 0}
STAMP = "2026-11-29_01:00:00"


@dataclass
class LinkedClone:
    name: str  # the (unmanaged, shut-off) domain
    folder: Path  # holds both files
    clone: Path
    base: Path

    def hashes(self) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (self.clone, self.base)}


def _linked_clone(lab) -> LinkedClone:
    """A shut-off domain on clone.qcow2 whose backing file base.qcow2 sits in the same folder; both carry data,
    so a commit of the clone into the base (what recovery once did) would change the base's bytes."""
    name = lab.unique_name("vm")
    folder = lab.VMS_DIR / name / "images"
    clone, base = folder / "clone.qcow2", folder / "base.qcow2"
    lab.create_vm(disk_paths=[clone], fmt="qcow2", start=False, name=name)
    lab.run("qemu-img", "create", "-q", "-f", "qcow2", base, "16M")
    lab.run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", base)
    clone.unlink()
    lab.run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", clone)
    lab.run("qemu-io", "-f", "qcow2", "-c", "write -P 0x22 0 64k", clone)
    return LinkedClone(name, folder, clone, base)


def test_config_check_refuses_overlay_dir_holding_a_linked_clone(lab, dataset, vmsnapd_env):
    clone = _linked_clone(lab)
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": "none"}
    env.run("config", "check")  # the config as it was: fine
    env.daemon["overlay_dir"] = str(clone.folder)

    proc = env.run("config", "check", expect=78)

    assert f"daemon.overlay_dir = {clone.folder}" in proc.stderr, proc.stderr
    assert f"domain {clone.name}" in proc.stderr and str(clone.clone) in proc.stderr, proc.stderr
    assert "valid" not in proc.stdout


def test_once_with_a_config_that_slipped_through_touches_nothing(lab, dataset, vmsnapd_env):
    """The config is edited after it was checked (what `ExecStartPre=config check` saw is no longer what runs):
    the pass checks the folders itself before recovery and refuses, with the reason; nothing changes."""
    clone = _linked_clone(lab)
    before = clone.hashes()
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": "none"}
    env.run("config", "check")
    env.daemon["overlay_dir"] = str(clone.folder)

    proc = env.run("once", expect=1)

    assert "pass refused, nothing done" in proc.stdout and str(clone.folder) in proc.stdout, proc.stdout
    assert lab.snapshot_names(dataset.name) == []
    assert clone.hashes() == before
    assert sorted(p.name for p in clone.folder.iterdir()) == ["base.qcow2", "clone.qcow2"]
    dom = lab.conn().lookupByName(clone.name)
    assert f"'{clone.clone}'" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    proc = env.run("recover", expect=1)
    assert "refused, nothing recovered" in proc.stdout, proc.stdout
    assert clone.hashes() == before


_PASS_WITHOUT_FOLDER_CHECK = r"""
import json, sys
from pathlib import Path
import vmsnapd.actions.passes as passes
from vmsnapd.actions.context import Context
from vmsnapd.actions.folders import FolderCheck
from vmsnapd.actions.recover import recover
from vmsnapd.config import load_config
from vmsnapd.runner import Runner
from vmsnapd.zfs import Zfs

passes.check_folders = lambda ctx, survey: FolderCheck()  # the first line of defence, switched off
path = Path(sys.argv[1])
runner = Runner()
ctx = Context(config=load_config(path), config_path=path, runner=runner, zfs=Zfs(runner))
recovered = recover(ctx, folders=FolderCheck())
report = passes.run_pass(ctx)
print(json.dumps({"recover": recovered.model_dump(), "pass": report.model_dump(mode="json")}))
"""


@pytest.fixture
def linked_clone(lab):
    """_linked_clone, its domain removed at teardown (for a test without a `dataset` fixture, whose teardown
    removes the domains created during the test)."""
    clone = _linked_clone(lab)
    yield clone
    lab.destroy_vm(clone.name)


def test_recovery_itself_leaves_an_unmanaged_linked_clone_alone(lab, shared_vm, linked_clone, vmsnapd_env):
    """Second line of defence: with the folder check bypassed, overlay_dir = the clone's folder, a managed running
    VM taking a full overlay cycle in that very folder: recovery reports the clone (not vmsnapd's) and the pass
    commits only its own overlay; the clone and its base keep every byte."""
    clone = linked_clone
    vm, dataset = shared_vm, shared_vm.disk.dataset
    before = clone.hashes()
    env = vmsnapd_env
    env.daemon["overlay_dir"] = str(clone.folder)
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name}
    env.write()

    proc = subprocess.run([sys.executable, "-c", _PASS_WITHOUT_FOLDER_CHECK, str(env.config_path)],
                          capture_output=True, text=True, timeout=300)

    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["recover"]["actions"] == [] and out["recover"]["errors"] == [], out
    assert any(clone.name in w and "left alone" in w for w in out["recover"]["warnings"]), out
    assert [o["error"] for o in out["pass"]["outcomes"] if o["action"] == "take"] == [None], out
    assert len(lab.snapshot_names(dataset.name)) == 1
    assert clone.hashes() == before
    assert sorted(p.name for p in clone.folder.iterdir()) == ["base.qcow2", "clone.qcow2"]
    assert str(clone.folder) not in vm.dom.XMLDesc(0)
    lab.wait_counter_advances(vm, by=5, timeout=30)


def _define_next_boot_on_overlay(lab, vm, overlay_dir: Path) -> Path:
    """What a crash between pivot and the definition update leaves: the guest runs on its base, its persistent
    definition (next boot) names an overlay of vmsnapd's whose backing file is that base."""
    base = vm.disks[0].path
    overlay = overlay_dir / overlay_file_name(vm.name, "vda", STAMP)
    lab.run("qemu-img", "create", "-q", "-u", "-f", "qcow2", "-b", base, "-F", "raw", overlay, "16M")
    xml = vm.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    disk = f"<source file='{base}'/>"
    assert disk in xml and xml.count("type='raw' cache=") >= 1
    xml = xml.replace(disk, f"<source file='{overlay}'/>", 1)
    xml = xml.replace("<driver name='qemu' type='raw'", "<driver name='qemu' type='qcow2'", 1)
    vm.dom.connect().defineXML(xml)
    assert str(overlay) in vm.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert str(overlay) not in vm.dom.XMLDesc(0)
    return overlay


def test_stale_persistent_definition_is_repaired_for_managed_domains_only(lab, shared_vm, dataset_factory,
                                                                         vmsnapd_env):
    managed, ds_managed = shared_vm, shared_vm.disk.dataset
    ds_other = dataset_factory()
    other = lab.create_vm(ds_other)
    env = vmsnapd_env
    env.datasets[ds_managed.name] = {**ONE_HOURLY, "domain": managed.name}
    env.datasets[ds_other.name] = {**ONE_HOURLY, "domain": "none"}
    mine = _define_next_boot_on_overlay(lab, managed, env.overlay_dir)
    theirs = _define_next_boot_on_overlay(lab, other, env.overlay_dir)

    proc = env.run("recover")

    assert "pointed the persistent definition" in proc.stdout and managed.name in proc.stdout, proc.stdout
    assert f"WARNING {other.name} disk vda" in proc.stdout and "not managed" in proc.stdout, proc.stdout
    inactive = managed.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert str(mine) not in inactive and f"<source file='{managed.disks[0].path}'/>" in inactive
    assert "type='qcow2'" not in inactive, inactive
    assert not mine.exists()
    assert managed.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    lab.wait_counter_advances(managed, by=5, timeout=30)
    # The unmanaged one is exactly as it was.
    assert str(theirs) in other.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) and theirs.exists()
    # The next boot of the repaired domain starts from its base and continues its counter.
    lab.stop_vm(managed)
    last = managed.max_counter()
    lab.start_vm(managed)
    assert managed.max_counter() > last
    assert str(mine) not in managed.dom.XMLDesc(0)


def test_foreign_overlay_in_overlay_dir_is_refused_and_left_alone(lab, shared_vm, vmsnapd_env):
    """A hand-written script left a managed VM running on `handmade.qcow2` in overlay_dir: not vmsnapd's name, so
    `config check` says so (exit 78) and `recover` refuses rather than guess; the VM keeps running on it."""
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name}
    overlay = env.overlay_dir / "handmade.qcow2"
    vm.dom.snapshotCreateXML(
        f"<domainsnapshot><name>handmade</name><memory snapshot='no'/><disks>"
        f"<disk name='vda' snapshot='external'><source file='{overlay}'/></disk>"
        f"<disk name='{vm.token_target}' snapshot='no'/></disks></domainsnapshot>",
        libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY)

    proc = env.run("config", "check", expect=78)
    assert f"holds disk vda of domain {vm.name} ({overlay})" in proc.stderr, proc.stderr
    proc = env.run("recover", expect=1)
    assert "refused" in proc.stdout, proc.stdout

    assert str(overlay) in vm.dom.XMLDesc(0) and overlay.exists()
    assert vm.dom.snapshotNum(0) == 1
    assert vm.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    # ...and keeps writing into the overlay it was left on (the base file is not where its writes go now).
    first = lab.read_max_counter(overlay, "qcow2")
    for _ in range(300):
        if lab.read_max_counter(overlay, "qcow2") > first:
            break
        time.sleep(0.1)
    assert lab.read_max_counter(overlay, "qcow2") > first


@pytest.mark.slow
def test_daemon_refuses_passes_after_an_edit_that_slipped_through(lab, dataset, vmsnapd_env):
    """The Must-hold literally: the daemon starts with a good config, the file is edited to point overlay_dir at
    the linked clone's folder and reloaded (SIGHUP accepts it: only the host-aware check can see the problem);
    the next pass is refused before recovery, the daemon keeps running, the clone and its base keep every byte."""
    clone = _linked_clone(lab)
    before = clone.hashes()
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": "none"}
    env.write()
    notify_path = env.root / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(1)
    seen: list[str] = []

    def wait_for(want: str, timeout: float, but_not: str | None = None) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [m for m in seen if want in m and not (but_not and but_not in m)]
            if hits:
                return hits[-1]
            try:
                seen.append(sock.recv(4096).decode())
            except socket.timeout:
                pass
        raise AssertionError(f"no {want!r} from the daemon within {timeout}s; got {seen[-10:]}")

    log_path = env.root / "daemon.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "vmsnapd", "-c", str(env.config_path), "-v", "run"],
                                stdout=log_file, stderr=subprocess.STDOUT,
                                env={**os.environ, "NOTIFY_SOCKET": str(notify_path)})
    try:
        assert "0 failure(s)" in wait_for("STATUS=pass 1:", 120)
        env.daemon["overlay_dir"] = str(clone.folder)
        env.write()
        proc.send_signal(signal.SIGHUP)
        wait_for("STATUS=config reloaded", 30)
        # The first pass that starts after the reload (a pass already running keeps the config it began with).
        wait_for("STATUS=pass", 150, but_not=" 0 failure(s)")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
    log = log_path.read_text()
    assert "pass refused, nothing done" in log and str(clone.folder) in log, log[-3000:]
    assert clone.hashes() == before
    assert sorted(p.name for p in clone.folder.iterdir()) == ["base.qcow2", "clone.qcow2"]
