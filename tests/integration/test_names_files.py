"""Every domain name libvirt accepts works, and root never writes through someone else's folder or link
(issue 8, "Must hold": builds 3 and 4).

Domains named like `-odd vm$(touch x)` and `..x` are defined on the host; passes for other datasets go on, the
odd one managed gets a full VM cycle and a restore, no file `x` appears, its dump lies inside ram_dir. Folders
owned by another user and links planted where vmsnapd writes are refused with a message, and each link's
target is checked unchanged afterwards.
"""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import libvirt
import pytest

from vmsnapd.journal import CycleRecord, Journal
from vmsnapd.names import encode_name

pytestmark = [pytest.mark.lab]

ONE_HOURLY = {"hourly": 1, "daily": 0, "monthly": 0}
PLAIN = {**ONE_HOURLY, "domain": "none"}
NOBODY = 65534


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _define_bare(lab, name: str) -> None:
    """A shut-off domain without devices: enough to be listed by libvirt."""
    lab.conn().defineXML(f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>16</memory>"
                         "<os><type arch='x86_64'>hvm</type></os></domain>")


def _remove_domain(lab, name: str) -> None:
    """lab.destroy_vm only removes `vlab…` names; these start with '-' and '.' on purpose."""
    try:
        dom = lab.conn().lookupByName(name)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        dom.destroy()
    for snap in dom.listAllSnapshots():
        snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)


@pytest.fixture
def odd_names(lab):
    """Two unique names of the issue's shape: a leading '-', a space and `$(touch x)`; a leading '..'."""
    unique = lab.unique_name("odd")
    names = [f"-odd {unique} vm$(touch x)", f"..x{unique}"]
    yield names
    for name in names:
        _remove_domain(lab, name)


def test_odd_domain_names_anywhere_and_managed(lab, dataset_factory, vmsnapd_env, odd_names):
    odd, dots = odd_names
    stray = [Path.cwd() / "x", Path("/x"), vmsnapd_env.root / "x"]
    if any(p.exists() for p in stray):
        pytest.skip(f"a file named x already exists: {[str(p) for p in stray if p.exists()]}")
    plain, vm_dataset = dataset_factory(), dataset_factory()
    _define_bare(lab, dots)
    vm = lab.create_vm(vm_dataset, name=odd)
    lab.CREATED_VMS.remove(odd)  # the lab's cleanup refuses non-`vlab` names: the fixture removes it
    env = vmsnapd_env
    env.datasets[plain.name] = PLAIN

    # Unmanaged, both odd domains leave the pass alone.
    env.run("config", "check")
    env.run("once")
    assert len(lab.snapshot_names(plain.name)) == 1
    assert lab.snapshot_names(vm_dataset.name) == []
    env.run("recover")
    env.run("status")

    # Managed: a full VM cycle with a RAM dump, stored under the encoded name inside ram_dir.
    env.datasets[vm_dataset.name] = {**ONE_HOURLY, "domain": odd}
    env.run("config", "check")
    proc = env.run("snapshot", vm_dataset.name)
    (snap,) = lab.snapshot_names(vm_dataset.name)
    folder = encode_name(odd)
    assert folder.startswith("%2Dodd ")
    assert [p.name for p in env.ram_dir.iterdir()] == [folder], proc.stdout
    dumps = sorted(p.name for p in (env.ram_dir / folder).iterdir())
    assert dumps == [f"{folder}_{snap.split('_', 1)[1].rsplit('_', 1)[0]}{ext}" for ext in (".json", ".mem")]
    assert (vm_dataset.mountpoint / ".vmsnapd" / f"{folder}.xml").exists()
    assert _mode(vm_dataset.mountpoint / ".vmsnapd" / f"{folder}.xml") == 0o600
    assert list(env.overlay_dir.iterdir()) == []
    assert vm.dom.isActive() and all(d.source == str(vm.disk.path) for d in _disks(vm))
    (point,) = json.loads(env.run("list", odd, "--json").stdout)
    assert point["snapshot"] == snap and point["ram_dump"]

    # And a restore from that dump.
    at_snapshot = lab.snapshot_max_counter(f"{vm_dataset.name}@{snap}", vm.disk.relpath)
    lab.wait_counter_advances(vm, by=10, start=at_snapshot)
    lab.write_token(vm, "restored")
    proc = env.run("restore", odd, snap, "--force-stop", "--yes")
    assert "resumed" in proc.stdout, proc.stdout
    lab.wait_counter_advances(vm, by=10, start=at_snapshot, timeout=60)
    _rewritten, first_new = lab.resume_evidence(vm, at_snapshot, "restored")
    assert first_new == at_snapshot + 1
    lab.stop_vm(vm)  # the replaced state is kept aside: drop it (zfs-fuse cannot while the VM has the origin open)
    env.run("restore", "--drop-aside", odd, "--yes")

    assert not [str(p) for p in stray if p.exists()], "a domain name reached a shell"


def _disks(vm):
    from vmsnapd.domxml import parse_disks

    return [d for d in parse_disks(vm.dom.XMLDesc(0)) if d.target == vm.disk.target]


def test_links_planted_where_a_vm_cycle_writes(lab, shared_vm, vmsnapd_env):
    """ram_dir/<domain> and the dataset's .vmsnapd/ are links to folders of someone else: nothing is written
    through them, the snapshot is still taken (disk-only) and the output says why."""
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name}
    victim_ram, victim_xml = env.root / "victim-ram", env.root / "victim-xml"
    for victim in (victim_ram, victim_xml):
        victim.mkdir(mode=0o755)
        (victim / "keep").write_text("precious\n")
        (victim / "keep").chmod(0o644)
    env.ram_dir.mkdir(mode=0o700)
    (env.ram_dir / vm.name).symlink_to(victim_ram)
    (dataset.mountpoint / ".vmsnapd").symlink_to(victim_xml)

    proc = env.run("snapshot", dataset.name)

    assert len(lab.snapshot_names(dataset.name)) == 1
    assert re.search(r"warning: .*symbolic link.*disk-only", proc.stdout), proc.stdout
    assert re.search(r"warning: domain XML not saved: .*\.vmsnapd is a symbolic link", proc.stdout), proc.stdout
    for victim in (victim_ram, victim_xml):
        assert sorted(p.name for p in victim.iterdir()) == ["keep"] and _mode(victim) == 0o755
        assert (victim / "keep").read_text() == "precious\n" and _mode(victim / "keep") == 0o644
    assert (env.ram_dir / vm.name).is_symlink() and (dataset.mountpoint / ".vmsnapd").is_symlink()
    assert not list(env.root.rglob("*.mem*")) and list(env.overlay_dir.iterdir()) == []
    assert vm.dom.isActive()


def test_a_ram_dir_owned_by_another_user_is_not_used(lab, shared_vm, vmsnapd_env):
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name, "on_memory_failure": "fail"}
    env.ram_dir.mkdir(mode=0o700)
    os.chown(env.ram_dir, NOBODY, NOBODY)

    proc = env.run("snapshot", dataset.name, expect=1)

    assert re.search(r"ram.*owned by .*uid 65534.*not root", proc.stdout + proc.stderr), proc.stdout
    assert lab.snapshot_names(dataset.name) == []
    assert list(env.ram_dir.iterdir()) == [] and os.stat(env.ram_dir).st_uid == NOBODY
    assert vm.dom.isActive()


@pytest.mark.parametrize("how", ["owned by nobody", "group-writable"])
def test_a_state_dir_someone_else_controls_stops_the_pass_with_a_message(lab, dataset, vmsnapd_env, how):
    env = vmsnapd_env
    env.datasets[dataset.name] = PLAIN
    env.state_dir.mkdir(mode=0o700)
    if how == "owned by nobody":
        os.chown(env.state_dir, NOBODY, NOBODY)
    else:
        env.state_dir.chmod(0o770)

    proc = env.run("once", expect=1)

    assert str(env.state_dir) in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert ("owned by" if how == "owned by nobody" else "may be written by group or others") in proc.stderr
    assert list(env.state_dir.iterdir()) == []
    assert lab.snapshot_names(dataset.name) == []


def test_a_link_as_the_lock_file_is_refused(lab, dataset, vmsnapd_env):
    env = vmsnapd_env
    env.datasets[dataset.name] = PLAIN
    victim = env.root / "victim"
    victim.write_text("precious\n")
    env.state_dir.mkdir(mode=0o700)
    (env.state_dir / "vmsnapd.lock").symlink_to(victim)

    proc = env.run("once", expect=1)

    assert "vmsnapd.lock" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert victim.read_text() == "precious\n"
    assert lab.snapshot_names(dataset.name) == []


def test_recover_never_deletes_a_file_a_journal_record_names_outside_overlay_dir(lab, dataset, vmsnapd_env):
    """Records (forged, damaged, or from another config) naming any other file: reported, the file stays."""
    env = vmsnapd_env
    env.datasets[dataset.name] = PLAIN
    env.write()
    victims = [env.root / "victim.img", env.overlay_dir / "not-ours.mem",
               env.overlay_dir / "vlabother-vm_2026-11-29_01:00:00.mem"]
    journal = Journal(env.state_dir)
    for index, victim in enumerate(victims):
        victim.write_text("precious\n")
        journal.begin(CycleRecord(
            cycle_id=f"vlabgone{index}-2026-11-29_01:00:00", domain="vlabgone-vm", datasets=[dataset.name],
            snapshot_names=["autosnap_2026-11-29_01:00:00_hourly"], stamp="2026-11-29_01:00:00", method="pause",
            state="frozen", ram_file=str(victim)))

    proc = env.run("recover", expect=None)

    for victim in victims:
        assert victim.read_text() == "precious\n", proc.stdout + proc.stderr
        assert f"{victim}, which is not a file vmsnapd makes" in proc.stdout + proc.stderr
