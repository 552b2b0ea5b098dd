"""Where libvirt writes a cycle's fresh RAM file: the RAM staging folder when it has room, else overlay_dir.

While a live RAM capture ends, the guest stands still until libvirt has finished the memory file (its last
pages, then its I/O helper's flush). On a disk that is ~140 ms of a busy 1 GiB guest's pause; on a tmpfs it is
free (docs/benchmarks.md, goal 1). So the fresh RAM file is written to `[daemon] ram_staging_dir` (default
/run/vmsnapd/staging, a tmpfs on systemd hosts) when that folder has room, and moved (or compressed) into the
RAM store after the guest runs again. The room is verified before the guest is touched (`staging_refusal`,
pure): free space for the guest's memory times STAGING_FACTOR (a busy guest's live capture re-sends pages),
and, on a memory-backed file system, enough of the host's available memory left over that staging cannot push
the host into memory pressure. Cycles running at once reserve their share (`StagingArea.claim`), so two of them
cannot both count the same free bytes. A refusal is no failure: the file goes to overlay_dir as before.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from vmsnapd.files import ensure_private_directory

log = logging.getLogger(__name__)

# Room asked of the staging folder: the guest's memory times this. A busy guest's live capture writes pages
# again as it dirties them (1 GiB guest, ~220 MiB touched: files of 407-1041 MiB measured).
STAGING_FACTOR = 1.5
# On a memory-backed staging folder, this share of the host's memory stays available after staging.
MEMORY_KEPT = 0.10
MEMORY_FILE_SYSTEMS = frozenset({"tmpfs", "ramfs"})
MIB = 1 << 20


@dataclass(frozen=True)
class StagingFacts:
    """What the staging rule looks at, gathered just before a cycle's RAM capture."""

    free: int  # bytes free on the staging folder's file system
    fs_type: str | None  # its file system type (/proc/self/mountinfo); None: unknown
    mem_available: int | None  # MemAvailable of /proc/meminfo, bytes; None: unknown
    mem_total: int | None
    reserved: int = 0  # bytes promised to other cycles staging now

    @property
    def memory_backed(self) -> bool:
        return self.fs_type in MEMORY_FILE_SYSTEMS


def staging_refusal(facts: StagingFacts, memory: int) -> str | None:
    """Why a guest with `memory` bytes of RAM must not stage its RAM file now, or None: it may."""
    need = int(memory * STAGING_FACTOR)
    room = facts.free - facts.reserved
    if room < need:
        promised = f", {facts.reserved // MIB} MiB of it promised to cycles under way" if facts.reserved else ""
        return f"it has {facts.free // MIB} MiB free{promised}, the RAM file may need {need // MIB} MiB"
    if not facts.memory_backed:
        return None
    if facts.mem_available is None or not facts.mem_total:
        return f"it is a {facts.fs_type} (memory) and the host's available memory cannot be read"
    left = facts.mem_available - facts.reserved - need
    if left < facts.mem_total * MEMORY_KEPT:
        return (f"it is a {facts.fs_type} (memory) and the host has {facts.mem_available // MIB} MiB available: "
                f"{need // MIB} MiB staged would leave less than {MEMORY_KEPT:.0%} of its memory")
    return None


def largest_staged(facts: StagingFacts) -> int:
    """The memory (bytes) of the largest guest whose RAM file `staging_refusal` would stage now, alone."""
    room = facts.free - facts.reserved
    if facts.memory_backed:
        if facts.mem_available is None or not facts.mem_total:
            return 0
        room = min(room, int(facts.mem_available - facts.reserved - facts.mem_total * MEMORY_KEPT))
    return max(0, int(room / STAGING_FACTOR))


def staging_note(folder: Path, facts: StagingFacts) -> str:
    """What `config check` says about the staging folder on this host now."""
    kind = f"{facts.fs_type}, " if facts.fs_type else ""
    largest = largest_staged(facts)
    if largest < MIB:
        return (f"ram_staging_dir {folder} ({kind}{facts.free // MIB} MiB free) has no room for a guest's RAM file "
                "now: RAM files go to overlay_dir")
    return (f"ram_staging_dir {folder} ({kind}{facts.free // MIB} MiB free): RAM files of guests with up to "
            f"{largest // MIB} MiB of memory are staged there (less while several cycles run), bigger ones go to "
            "overlay_dir")


# -- facts of the host (parsers pure, readers thin) ----------------------------------------------------------

def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo's fields in bytes ("MemAvailable:  123 kB" -> 125952); lines it cannot read are left out."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts or not parts[0].isdigit() or len(parts) > 2:
            continue
        unit = parts[1] if len(parts) == 2 else ""
        if unit not in ("", "kB"):
            continue
        fields[name.strip()] = int(parts[0]) * (1024 if unit == "kB" else 1)
    return fields


def _unescape(field: str) -> str:
    """mountinfo's octal escapes (\\040 for a space, \\011, \\012, \\134)."""
    out, i = [], 0
    while i < len(field):
        chunk = field[i + 1:i + 4]
        if field[i] == "\\" and len(chunk) == 3 and all(c in "01234567" for c in chunk):
            out.append(chr(int(chunk, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def fs_type_of(path: str, mountinfo: str) -> str | None:
    """The file system type of the mount holding `path` (absolute, resolved), from /proc/self/mountinfo's text:
    the last listed mount whose mount point is the longest prefix of `path`; None when no line can be read."""
    best: tuple[int, str] | None = None
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) < 7 or "-" not in fields[6:]:
            continue
        mount_point = _unescape(fields[4])
        after = fields[fields.index("-", 6) + 1:]
        if not after or not (path == mount_point or path.startswith(mount_point.rstrip("/") + "/")):
            continue
        if best is None or len(mount_point) >= best[0]:
            best = (len(mount_point), after[0])
    return best[1] if best else None


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def host_facts(folder: Path) -> StagingFacts:
    """The staging folder's (or its nearest existing ancestor's) free space and type, and the host's memory."""
    where = folder
    while not where.exists() and where != where.parent:
        where = where.parent
    meminfo = parse_meminfo(_read("/proc/meminfo"))
    return StagingFacts(free=shutil.disk_usage(where).free,
                        fs_type=fs_type_of(os.path.realpath(where), _read("/proc/self/mountinfo")),
                        mem_available=meminfo.get("MemAvailable"), mem_total=meminfo.get("MemTotal"))


# -- the folder shared by the cycles of one pass --------------------------------------------------------------

@dataclass(frozen=True)
class Refusal:
    """Why a cycle's RAM file is not staged; `loud`: the folder itself is wrong (a warning), not only full."""

    reason: str
    loud: bool = False


@dataclass(frozen=True)
class Claim:
    """Room promised to one cycle's RAM file in the staging folder, until `StagingArea.release`."""

    folder: Path
    size: int


class StagingArea:
    """The RAM staging folder of one pass: every cycle asks it first (`claim`) and gives its room back
    (`release`) once its RAM file has been moved into the RAM store or discarded."""

    def __init__(self, folder: Path, *, dry_run: bool = False,
                 facts: Callable[[Path], StagingFacts] = host_facts):
        self.folder = folder
        self.dry_run = dry_run
        self._facts = facts
        self._lock = threading.Lock()
        self._reserved = 0

    def claim(self, memory: int) -> Claim | Refusal:
        """Room for a guest with `memory` bytes of RAM, or why not (the RAM file then goes to overlay_dir)."""
        try:
            if not self.dry_run:  # a dry run creates no folder
                ensure_private_directory(self.folder)
            with self._lock:
                facts = replace(self._facts(self.folder), reserved=self._reserved)
                refusal = staging_refusal(facts, memory)
                if refusal is not None:
                    return Refusal(refusal)
                size = int(memory * STAGING_FACTOR)
                self._reserved += size
                return Claim(folder=self.folder, size=size)
        except OSError as exc:  # UnsafePath too: someone else's folder is never written
            return Refusal(f"it cannot be used: {exc}", loud=True)

    def release(self, claim: Claim) -> None:
        with self._lock:
            self._reserved -= claim.size
