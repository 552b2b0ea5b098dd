"""The names of the files a cycle puts into `overlay_dir`, built and recognised in ONE place (pure).

Recovery treats a file in overlay_dir as vmsnapd's only when its name has exactly the shape built here
(see vmsnapd/ownership.py), so building and recognising must never drift apart: any change to how the
domain part is spelled in a file name is one edit in `_domain_part`/`_domain_of` below.

    overlay:      {domain}_{target}_{stamp}.qcow2     e.g. web_vda_2026-11-29_01:00:00.qcow2
    RAM file:     {domain}_{stamp}.mem                e.g. web_2026-11-29_01:00:00.mem
    libvirt snapshot name (no metadata is kept, but a crash of an older version may have left some): vmsnapd-<epoch>
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from vmsnapd.names import DISK_TARGET_PATTERN, STAMP_FORMAT, STAMP_PATTERN, InvalidName, decode_name, encode_name

OVERLAY_SUFFIX = ".qcow2"
MEMORY_SUFFIX = ".mem"
LIBVIRT_SNAPSHOT_PREFIX = "vmsnapd-"

_STAMP = STAMP_PATTERN
_TARGET = DISK_TARGET_PATTERN
_OVERLAY = re.compile(rf"(?P<domain>.+)_(?P<target>{_TARGET})_(?P<stamp>{_STAMP}){re.escape(OVERLAY_SUFFIX)}",
                      re.DOTALL)
_MEMORY = re.compile(rf"(?P<domain>.+)_(?P<stamp>{_STAMP}){re.escape(MEMORY_SUFFIX)}", re.DOTALL)
_LIBVIRT_SNAPSHOT = re.compile(rf"{re.escape(LIBVIRT_SNAPSHOT_PREFIX)}\d+")


@dataclass(frozen=True)
class OverlayName:
    domain: str
    target: str
    stamp: str


@dataclass(frozen=True)
class MemoryName:
    domain: str
    stamp: str


def _domain_part(domain: str) -> str:
    """How a domain name is spelled inside a file name: names.encode_name (no '/', no leading '-' or '.')."""
    return encode_name(domain)


def _domain_of(part: str) -> str | None:
    """The inverse of `_domain_part`; None when `part` is not an encoding vmsnapd makes."""
    try:
        return decode_name(part)
    except InvalidName:
        return None


def _valid_stamp(stamp: str) -> bool:
    try:
        datetime.strptime(stamp, STAMP_FORMAT)
    except ValueError:
        return False
    return True


def overlay_file_name(domain: str, target: str, stamp: str) -> str:
    """The file name of the overlay a cycle at `stamp` gives disk `target` of `domain`."""
    if not re.fullmatch(_TARGET, target):
        raise InvalidName(f"disk target {target!r}: only letters, digits, '.' and '-' are expected")
    if not _valid_stamp(stamp):
        raise InvalidName(f"{stamp!r} is not a cycle stamp ({STAMP_FORMAT})")
    return f"{_domain_part(domain)}_{target}_{stamp}{OVERLAY_SUFFIX}"


def parse_overlay_file_name(name: str) -> OverlayName | None:
    """Domain, target and stamp of a name built by `overlay_file_name`; None for any other name."""
    match = _OVERLAY.fullmatch(name)
    if match is None or not _valid_stamp(match["stamp"]):
        return None
    domain = _domain_of(match["domain"])
    return OverlayName(domain, match["target"], match["stamp"]) if domain else None


def memory_file_name(domain: str, stamp: str) -> str:
    """The file name of the fresh RAM file a cycle at `stamp` of `domain` writes into overlay_dir."""
    if not _valid_stamp(stamp):
        raise InvalidName(f"{stamp!r} is not a cycle stamp ({STAMP_FORMAT})")
    return f"{_domain_part(domain)}_{stamp}{MEMORY_SUFFIX}"


def parse_memory_file_name(name: str) -> MemoryName | None:
    match = _MEMORY.fullmatch(name)
    if match is None or not _valid_stamp(match["stamp"]):
        return None
    domain = _domain_of(match["domain"])
    return MemoryName(domain, match["stamp"]) if domain else None


def is_file_of(name: str, domain: str) -> bool:
    """Whether `name` is an overlay or RAM file name vmsnapd gives `domain`'s cycles. Compares the encoded
    domain part, so it holds also for a name too long to decode (cut to a digest by names.encode_name)."""
    prefix = f"{_domain_part(domain)}_"
    if not name.startswith(prefix):
        return False
    rest = name[len(prefix):]
    match = (re.fullmatch(rf"(?P<stamp>{_STAMP}){re.escape(MEMORY_SUFFIX)}", rest)
             or re.fullmatch(rf"{_TARGET}_(?P<stamp>{_STAMP}){re.escape(OVERLAY_SUFFIX)}", rest))
    return match is not None and _valid_stamp(match["stamp"])


def libvirt_snapshot_name(epoch: int) -> str:
    return f"{LIBVIRT_SNAPSHOT_PREFIX}{epoch}"


def is_libvirt_snapshot_name(name: str) -> bool:
    return _LIBVIRT_SNAPSHOT.fullmatch(name) is not None
