"""PURE domain-XML work: read disks and files from a domain definition, write the snapshot XML, point a
definition's disk back at its base file. Strings in, strings or plain data out; no libvirt, no I/O.

The libvirt adapter (vmsnapd.hypervisor) passes these strings to and from libvirt; planners and fakes use
them directly.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from vmsnapd.ownership import SnapshotRecord

# Keep the usual prefix when a definition is rewritten (repoint_disk); libvirt reads namespaces by URI anyway.
ET.register_namespace("qemu", "http://libvirt.org/schemas/domain/qemu/1.0")

AGENT_CHANNEL = "org.qemu.guest_agent.0"


@dataclass(frozen=True)
class Disk:
    target: str  # vda
    source: str  # file path or block device
    kind: str  # "file" | "block"
    driver_type: str  # raw | qcow2 | ...
    readonly: bool
    shareable: bool
    device: str  # disk | cdrom | floppy | lun

    @property
    def snapshottable(self) -> bool:
        """Disks a cycle must capture: writable, not shared with another VM, not removable media."""
        return self.device in ("disk", "lun") and not self.readonly and not self.shareable and bool(self.source)


def disks_below(disks: Iterable[Disk], folder: str) -> list[Disk]:
    """The disks whose source lies below `folder`, a real path (libvirt names sources by theirs; the callers resolve
    overlay_dir): on an overlay in it, a cycle that did not finish."""
    base = folder.rstrip("/") + "/"
    return [d for d in disks if d.source.startswith(base)]


def parse_disks(domain_xml: str) -> list[Disk]:
    root = ET.fromstring(domain_xml)
    disks = []
    for el in root.findall("./devices/disk"):
        target = el.find("target")
        source = el.find("source")
        driver = el.find("driver")
        path = ""
        if source is not None:
            path = source.get("file") or source.get("dev") or ""
        disks.append(Disk(
            target=target.get("dev", "") if target is not None else "",
            source=path,
            kind=el.get("type", "file"),
            driver_type=driver.get("type", "raw") if driver is not None else "raw",
            readonly=el.find("readonly") is not None,
            shareable=el.find("shareable") is not None,
            device=el.get("device", "disk"),
        ))
    return disks


def nvram_path(domain_xml: str) -> str | None:
    el = ET.fromstring(domain_xml).find("./os/nvram")
    return el.text.strip() if el is not None and el.text else None


# QEMU 9.0.0 in libvirt's version numbering (major * 1,000,000 + minor * 1,000 + micro): the first QEMU whose
# live migration keeps the dirty-page tracking of a TCG guest coherent (commit 03bfc2188f06, "physmem: Fix
# migration dirty bitmap coherency with TCG memory access"; Debian 12's 7.2.x has not got it).
QEMU_TCG_DIRTY_TRACKING_FIXED = 9_000_000


def live_ram_caveat(domain_xml: str, qemu_version: int) -> str | None:
    """Why a live RAM capture of this domain may not hold one instant, or None. QEMU before 9.0 clears the
    dirty bits of a TCG guest (domain type 'qemu': no KVM) without resetting its TLB, so stores the guest makes
    through an already-dirty TLB entry during the capture go untracked and the file keeps an older copy of
    those pages; a restore then resumes into memory from two moments (docs/benchmarks.md, goal 6). KVM guests
    are not concerned; `qemu_version` 0 (unknown) gives no caveat."""
    if ET.fromstring(domain_xml).get("type") != "qemu" or not 0 < qemu_version < QEMU_TCG_DIRTY_TRACKING_FIXED:
        return None
    version = f"{qemu_version // 1_000_000}.{qemu_version // 1_000 % 1_000}.{qemu_version % 1_000}"
    return (f"live RAM capture of a TCG guest (domain type 'qemu', no KVM) on QEMU {version} can miss pages "
            "the guest writes meanwhile (QEMU before 9.0 loses their dirty tracking under TCG, fixed by QEMU "
            "commit 03bfc2188f06), so a restore may resume into corrupt memory: set live = false for its "
            "datasets")


def has_agent_channel(domain_xml: str) -> bool:
    """Whether the definition has a qemu-guest-agent channel at all (else there is nobody to ask)."""
    root = ET.fromstring(domain_xml)
    return any(t.get("name") == AGENT_CHANNEL for t in root.findall("./devices/channel/target"))


def disk_files(domain_xml: str) -> list[tuple[str, str]]:
    """(target, file) for every disk source of a domain definition and every backing file it names."""
    files = []
    for el in ET.fromstring(domain_xml).findall("./devices/disk"):
        target = el.find("target")
        dev = target.get("dev", "") if target is not None else ""
        for source in el.iter("source"):
            path = source.get("file") or source.get("dev") or ""
            if path:
                files.append((dev, path))
    return files


def storage_pool_path(pool_xml: str) -> str:
    """A storage pool's target path; empty for pools without one."""
    el = ET.fromstring(pool_xml).find("./target/path")
    return el.text.strip() if el is not None and el.text else ""


# -- snapshots ------------------------------------------------------------------------------------------------

def external_snapshot_xml(snapshot_name: str, overlays: dict[str, str], memory_file: str | None,
                          skip_disks: list[str]) -> str:
    """An external snapshot: each disk in `overlays` (target -> overlay path) gets a fresh qcow2 overlay, the
    RAM goes to `memory_file` when given, the disks in `skip_disks` are left alone."""
    disks_xml = "".join(
        f"<disk name={quoteattr(t)} snapshot='external' type='file'>"
        f"<driver type='qcow2'/><source file={quoteattr(p)}/></disk>" for t, p in overlays.items()
    ) + _skipped(skip_disks)
    if memory_file:
        memory_xml = f"<memory snapshot='external' file={quoteattr(memory_file)}/>"
    else:
        memory_xml = "<memory snapshot='no'/>"
    return _snapshot_xml(snapshot_name, memory_xml, disks_xml)


def manual_snapshot_xml(snapshot_name: str, targets: list[str], memory_file: str, skip_disks: list[str]) -> str:
    """libvirt's `snapshot=manual`: the RAM goes to `memory_file`, the disks `targets` are left for the caller."""
    disks_xml = "".join(f"<disk name={quoteattr(t)} snapshot='manual'/>" for t in targets) + _skipped(skip_disks)
    return _snapshot_xml(snapshot_name, f"<memory snapshot='external' file={quoteattr(memory_file)}/>", disks_xml)


def _skipped(skip_disks: list[str]) -> str:
    return "".join(f"<disk name={quoteattr(t)} snapshot='no'/>" for t in skip_disks)


def _snapshot_xml(snapshot_name: str, memory_xml: str, disks_xml: str) -> str:
    return (f"<domainsnapshot><name>{snapshot_name}</name>"
            f"{memory_xml}<disks>{disks_xml}</disks></domainsnapshot>")


def snapshot_record(name: str, snapshot_xml: str) -> SnapshotRecord:
    """The files a libvirt snapshot record names. Only the snapshot's own <disks> and <memory>: the copy of
    the domain definition inside is not what the snapshot made."""
    root = ET.fromstring(snapshot_xml)
    disks = []
    for el in root.findall("./disks/disk"):
        source = el.find("source")
        path = (source.get("file") or source.get("dev") or "") if source is not None else ""
        if path:
            disks.append((el.get("name", ""), path))
    memory = root.find("./memory")
    memory_file = memory.get("file") if memory is not None else None
    return SnapshotRecord(name=name, disks=tuple(disks), memory=memory_file or None)


# -- a definition left on an overlay ---------------------------------------------------------------------------

def _disk_on(root: ET.Element, target: str, path: str) -> ET.Element | None:
    disk = None
    for el in root.findall("./devices/disk"):
        tgt, src = el.find("target"), el.find("source")
        if tgt is not None and tgt.get("dev") == target and src is not None and src.get("file") == path:
            disk = el
    return disk


def disk_uses_file(domain_xml: str, target: str, path: str) -> bool:
    """Whether disk `target` of the definition has `path` as its source file."""
    return _disk_on(ET.fromstring(domain_xml), target, path) is not None


def repoint_disk(domain_xml: str, target: str, overlay_path: str, base: str, fmt: str) -> str | None:
    """The definition with disk `target`, when its source is `overlay_path`, on `base` (format `fmt`) instead
    and without the overlay's backing chain; None when the definition does not name the overlay."""
    root = ET.fromstring(domain_xml)
    disk = _disk_on(root, target, overlay_path)
    if disk is None:
        return None
    disk.find("source").set("file", base)
    driver = disk.find("driver")
    if driver is not None:
        driver.set("type", fmt)
    for backing in disk.findall("backingStore"):
        disk.remove(backing)
    return ET.tostring(root, encoding="unicode")
