"""PURE: disks whose backing chain leaves the datasets a VM's snapshots cover (docs/operations.md, "Disks on a
backing file outside the datasets").

A linked clone's disk (a qcow2 overlay on a template image, or a chain of them) reads every block it never wrote
from its backing file. When that file lies outside the datasets snapshotted with the VM, a snapshot of the VM is
a restore point only as long as that file stays present and unchanged: `check` warns, the cycle warns (once per
domain and process in the log, every time in its outcome), the RAM dump's manifest records the file's size and
modification time (and so does the user property `vmsnapd:backing` on every snapshot the cycle took: the one
record a snapshot without a RAM dump has), and a restore refuses when the file is gone and warns loudly when it
changed since.

The chains are read by `qemu-img info --backing-chain -U` (vmsnapd.qemuimg, gathered in vmsnapd.targets): it
works alike for running and shut-off domains, where libvirt's inactive XML has no `<backingStore>`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import BaseModel, TypeAdapter, ValidationError

# The user property a cycle sets on the snapshots it took of a VM whose disks read backing files outside its
# datasets: those files as they were (JSON, ASCII only). It lives and dies with the snapshot, and is there for a
# snapshot without a RAM dump (a shut-off VM, `memory = false`) too.
BACKING_PROPERTY = "vmsnapd:backing"
# ZFS refuses a user property value of 8192 bytes or more (zfs-fuse aborts on 9000, measured on the lab).
MAX_PROPERTY_VALUE = 8000


@dataclass(frozen=True)
class ChainFile:
    """One backing file of a disk's chain as gathered: where it is and what it looks like now."""

    path: str
    dataset: str | None  # the dataset whose mountpoint holds it (vmsnapd.targets.dataset_of_path), None: none
    size: int | None = None  # None: it cannot be looked at (missing, no permission)
    mtime_ns: int | None = None


class BackingFile(BaseModel):
    """A backing file a disk of a VM reads, outside the datasets snapshotted with the VM."""

    disk: str  # the disk's target (vda) whose chain reaches it
    path: str
    dataset: str | None = None  # a managed dataset that is not the VM's (snapshotted at other instants), or None
    size: int | None = None  # when it was looked at (the cycle: recorded in the RAM dump's manifest)
    mtime_ns: int | None = None

    @property
    def missing(self) -> bool:
        """Not there when it was looked at (for a record of the present; a manifest's record was looked at)."""
        return self.size is None

    def changed_from(self, now: ChainFile) -> bool:
        """Whether the file looked at `now` differs from this record of it (size or modification time); an
        unrecorded identity (None) cannot tell."""
        if self.size is None or self.mtime_ns is None:
            return False
        return (self.size, self.mtime_ns) != (now.size, now.mtime_ns)


def outside_backing(disks: list[tuple[str, str]], chains: dict[str, list[ChainFile]],
                    datasets: list[str]) -> list[BackingFile]:
    """Every backing file of the disks (`(target, source)`; `chains`: source → its backing files, nearest first)
    that is on none of `datasets` (the VM's snapshotted datasets), in disk and chain order."""
    found = []
    for target, source in disks:
        for link in chains.get(source, []):
            if link.dataset not in datasets:
                found.append(BackingFile(disk=target, path=link.path, dataset=link.dataset, size=link.size,
                                         mtime_ns=link.mtime_ns))
    return found


_FILES = TypeAdapter(list[BackingFile])


def backing_property(files: list[BackingFile]) -> str | None:
    """The value of BACKING_PROPERTY recording `files`; None when it would be too long for ZFS to keep."""
    value = json.dumps([f.model_dump() for f in files], separators=(",", ":"))  # ASCII: no tab, no newline
    return value if len(value) <= MAX_PROPERTY_VALUE else None


def parse_backing_property(value: str) -> list[BackingFile] | None:
    """The backing files BACKING_PROPERTY's `value` records; None when the snapshot has none (`zfs get` prints
    `-`); ValueError saying why when it is something else than vmsnapd wrote."""
    if value.strip() in ("", "-"):
        return None
    try:
        return _FILES.validate_json(value)
    except ValidationError as exc:
        raise ValueError(f"{BACKING_PROPERTY} is not a record of backing files: "
                         f"{exc.errors()[0]['msg']} ({value[:80]!r})") from None


def _by_disk(files: list[BackingFile]) -> dict[str, list[BackingFile]]:
    grouped: dict[str, list[BackingFile]] = {}
    for f in files:
        grouped.setdefault(f.disk, []).append(f)
    return grouped


def _where(f: BackingFile) -> str:
    where = f"{f.path} (on dataset {f.dataset}, snapshotted apart from the VM)" if f.dataset else f.path
    return where if not f.missing else (f"{where} (MISSING now: the disk cannot be opened again, its next start "
                                        "and every restore of it fail)")


def disk_findings(domain: str, files: list[BackingFile]) -> list[tuple[str, bool]]:
    """One (warning, a file of it is missing) per disk: what it depends on, what that means, what to do."""
    return [(f"disk {disk} of {domain} reads backing file {', '.join(_where(f) for f in chain)} outside the "
             f"datasets snapshotted with {domain}: its restore points are valid only while that file stays present "
             f"and unchanged; flatten the disk (`virsh blockpull {domain} {disk} --wait` while it runs, "
             f"`qemu-img convert -O qcow2` to a new file while it is shut off) or keep the backing file on a "
             f"dataset of {domain}", any(f.missing for f in chain)) for disk, chain in _by_disk(files).items()]


def outside_warnings(domain: str, files: list[BackingFile]) -> list[str]:
    return [text for text, _missing in disk_findings(domain, files)]


def unknown_chain_warning(domain: str, disk: str, error: str) -> str:
    return (f"cannot tell whether disk {disk} of {domain} depends on a file outside its snapshotted datasets: "
            f"{error}")


@dataclass
class RestoreVerdict:
    """What checking a restore point's outside backing files found."""

    missing: list[str]  # refusals: the restored disk could not be read
    changed: list[str]  # loud warnings: the restored disk may read other blocks than at the snapshot
    verified: list[str]


def judge_restore(expected: list[BackingFile], now: dict[str, ChainFile]) -> RestoreVerdict:
    """The outside backing files a restore point's disks read (`expected`: as the RAM dump's manifest recorded
    them at the snapshot, with their size and modification time; and the current disks' chains', without) against
    what is there `now` (path → ChainFile; size None: missing)."""
    verdict = RestoreVerdict(missing=[], changed=[], verified=[])
    for f in expected:
        there = now.get(f.path)
        if there is None or there.size is None:
            verdict.missing.append(f"backing file {f.path} of disk {f.disk} (outside the snapshotted datasets) is "
                                   "missing: the restored disk could not be read; put it back first")
        elif f.changed_from(there):
            how = (f"size {f.size} → {there.size} bytes" if f.size != there.size else "modification time differs")
            verdict.changed.append(f"WARNING: backing file {f.path} of disk {f.disk} changed since the snapshot "
                                   f"({how}): the restored disk reads the blocks it never wrote from the file as it "
                                   "is now, not as it was at the snapshot — it may be silently corrupt")
        else:
            verdict.verified.append(f"backing file {f.path} of disk {f.disk} is there"
                                    + (", unchanged since the snapshot (size, modification time)" if f.size is not None
                                       else " (not recorded at the snapshot: present only)"))
    return verdict
