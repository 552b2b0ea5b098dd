"""Names that reach `zfs` and libvirt, and the sanoid-compatible snapshot names vmsnapd owns.

Every name is validated here before it can become part of an argv: a dataset called `-r`
or one containing a newline must never reach `zfs`.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime

PERIODS = ("frequently", "hourly", "daily", "weekly", "monthly", "yearly")

SNAPNAME_PREFIX = "autosnap_"
STAMP_FORMAT = "%Y-%m-%d_%H:%M:%S"
MAX_NAME_LENGTH = 255

_COMPONENT = re.compile(r"[A-Za-z0-9_.:-]+")
# ZFS also allows spaces in dataset (not pool) and snapshot names; they are harmless in an argv list.
_COMPONENT_WITH_SPACE = re.compile(r"[A-Za-z0-9_.: -]+")
# Pool names ZFS reserves for vdev types; `zpool create` refuses them.
_RESERVED_POOL_NAMES = ("mirror", "raidz", "draid", "spare", "log")
# A disk target as libvirt names it (vda, sdb, hdc, xvda, sda1): never an underscore, so an overlay file name
# `<domain>_<target>_<stamp>.qcow2` splits unambiguously. The one rule for `exclude_disks` and overlay names.
DISK_TARGET_PATTERN = r"[A-Za-z0-9.-]+"
# A cycle's stamp as it appears in snapshot, RAM dump and overlay names (STAMP_FORMAT, as a pattern).
STAMP_PATTERN = r"\d{4}-\d{2}-\d{2}_\d{2}:\d{2}:\d{2}"
_SNAPNAME = re.compile(
    # sanoid names the second snapshot of the hour repeated when DST ends `…_01:00:00dst_hourly`: ours too
    rf"autosnap_(?P<stamp>{STAMP_PATTERN})(?P<dst>dst)?_(?P<period>" + "|".join(PERIODS) + r")"
)


class InvalidName(ValueError):
    """A dataset, snapshot or domain name that ZFS or libvirt would refuse, or that is unsafe in an argv."""


def validate_dataset_name(name: str) -> str:
    """Return `name` unchanged when it is a ZFS filesystem/volume name (no snapshot part), else raise InvalidName."""
    if not isinstance(name, str) or not name:
        raise InvalidName("a dataset name must be a non-empty string")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"dataset name longer than {MAX_NAME_LENGTH} characters")
    if "@" in name:
        raise InvalidName(f"{name!r}: a dataset name must not contain '@' (that is a snapshot name)")
    if name.startswith("-"):
        raise InvalidName(f"{name!r}: a dataset name must not start with '-'")
    components = name.split("/")
    for component in components:
        _check_component(name, component)
    _check_pool_name(name, components[0])
    return name


def _check_component(name: str, component: str) -> None:
    if component == "":
        raise InvalidName(f"{name!r}: empty component (leading, trailing or doubled '/')")
    if component in (".", ".."):
        raise InvalidName(f"{name!r}: '.' and '..' are not allowed as components")
    if not _COMPONENT_WITH_SPACE.fullmatch(component):
        raise InvalidName(f"{name!r}: only letters, digits, spaces and _ . : - are allowed in each component")


def _check_pool_name(name: str, pool: str) -> None:
    if not _COMPONENT.fullmatch(pool):
        raise InvalidName(f"{name!r}: only letters, digits and _ . : - are allowed in a pool name")
    if not pool[0].isalpha():
        raise InvalidName(f"{name!r}: the pool name must start with a letter")
    if pool.startswith(_RESERVED_POOL_NAMES):
        raise InvalidName(f"{name!r}: pool names starting with {', '.join(_RESERVED_POOL_NAMES)} are reserved by ZFS")


def validate_snapshot_name(short_name: str) -> str:
    """Return the part after '@' unchanged when ZFS accepts it and it is safe in an argv, else raise InvalidName."""
    if not isinstance(short_name, str) or not short_name:
        raise InvalidName("a snapshot name must be a non-empty string")
    if len(short_name) > MAX_NAME_LENGTH:
        raise InvalidName(f"snapshot name longer than {MAX_NAME_LENGTH} characters")
    if short_name.startswith("-"):
        raise InvalidName(f"{short_name!r}: a snapshot name must not start with '-'")
    if not _COMPONENT_WITH_SPACE.fullmatch(short_name):
        raise InvalidName(f"{short_name!r}: only letters, digits, spaces and _ . : - are allowed (no '@' or '/')")
    return short_name


def validate_domain_name(name: str) -> str:
    """Return a libvirt domain name unchanged when libvirt could know it, else raise InvalidName.

    Any name libvirt 9 accepts is valid (`-web`, `..x`, `db 1`, `vm$(x)`, a tab, unicode): a domain name
    only ever reaches libvirt's API as one string, never an argv, and becomes a file name only through
    `encode_name`. Refused is only what libvirt itself refuses: empty, '/', a newline or NUL, `.`, `..`.
    """
    if not isinstance(name, str) or not name:
        raise InvalidName("a domain name must be a non-empty string")
    if "/" in name:
        raise InvalidName(f"{name!r}: libvirt domain names cannot contain '/'")
    if "\n" in name or "\x00" in name:
        raise InvalidName(f"{name!r}: libvirt domain names cannot contain a newline or NUL")
    if name in (".", ".."):
        raise InvalidName(f"{name!r} cannot be a libvirt domain name")
    return name


# -- names as file names --------------------------------------------------------------------------------

# Kept as they are in a file name: printable ASCII except '/' (a path separator), '%' (the escape) and
# '~' (marks a shortened name). A space or `$(…)` is harmless: vmsnapd never passes a path through a shell.
_KEPT_IN_FILE_NAMES = frozenset(chr(c) for c in range(0x20, 0x7F)) - {"/", "%", "~"}
# Never first: '-' (an option to a command), '.' ('.', '..' and hidden/temp files).
_NEVER_FIRST = ("-", ".")
# ram_dir/<name>/<name>_<stamp>.mem.zst and overlay names add at most ~45 characters: stay below NAME_MAX.
MAX_ENCODED_NAME = 200
_DIGEST_LENGTH = 16
_ESCAPE = re.compile(r"%([0-9A-F]{2})")


def encode_name(name: str) -> str:
    """The one way a domain name becomes (part of) a file name: safe, readable, injective.

    Each character outside printable ASCII, and '/', '%', '~', a leading '-' or '.', becomes `%XX` per
    UTF-8 byte (upper-case hex). The result has no '/', NUL or control character and never starts with
    '-' or '.'. A usual name (`web`, `win2k16 (test)`) is its own encoding, so files named before the
    encoding existed are found unchanged. `decode_name` gives the name back — except for an encoding
    longer than MAX_ENCODED_NAME, which is cut and ends in `~` and a digest of the name (the only raw
    '~' an encoding can hold); the manifest beside a dump keeps such a name in full.
    """
    out = []
    for index, char in enumerate(name):
        if char in _KEPT_IN_FILE_NAMES and not (index == 0 and char in _NEVER_FIRST):
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    encoded = "".join(out)
    if len(encoded) <= MAX_ENCODED_NAME:
        return encoded
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_LENGTH]
    head = encoded[: MAX_ENCODED_NAME - _DIGEST_LENGTH - 1]
    head = head[: head.rfind("%")] if "%" in head[-2:] else head  # never cut an escape in half
    return f"{head}~{digest}"


def decode_name(encoded: str) -> str:
    """The name `encode_name` made `encoded` from; InvalidName when `encoded` is not such an encoding
    (or a shortened one, whose name only its manifest knows)."""
    raw = bytearray()
    position = 0
    for match in _ESCAPE.finditer(encoded):
        raw += encoded[position:match.start()].encode("utf-8", "surrogatepass")
        raw.append(int(match[1], 16))
        position = match.end()
    raw += encoded[position:].encode("utf-8", "surrogatepass")
    try:
        name = raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise InvalidName(f"{encoded!r} is not an encoded name: {exc}") from None
    if not name or encode_name(name) != encoded:
        raise InvalidName(f"{encoded!r} is not an encoded name")
    return name


@dataclass(frozen=True)
class ParsedName:
    """The two parts of one of our snapshot names: the cycle's stamp (`2026-11-29_01:00:00`) and the period."""

    stamp: str
    period: str


def format_snapname(ts: datetime, period: str) -> str:
    """`autosnap_YYYY-MM-DD_HH:MM:SS_<period>` for the wall time shown by `ts` (the caller chose UTC or local)."""
    if period not in PERIODS:
        raise ValueError(f"unknown period {period!r}; expected one of {', '.join(PERIODS)}")
    return f"{SNAPNAME_PREFIX}{ts.strftime(STAMP_FORMAT)}_{period}"


@functools.lru_cache(maxsize=1 << 16)  # pure; one name recurs on every dataset of a cycle (1,000s per pass)
def parse_snapname(name: str) -> ParsedName | None:
    """The stamp and period of a name that is exactly ours, or None for any other snapshot (never destroyed)."""
    match = _SNAPNAME.fullmatch(name)
    if match is None:
        return None
    try:
        datetime.strptime(match["stamp"], STAMP_FORMAT)
    except ValueError:
        return None
    # a dst name is another instant than the same wall time without it: its stamp keeps the suffix, so it is never
    # taken for the same cycle (restore) or matched to a RAM dump
    return ParsedName(stamp=match["stamp"] + (match["dst"] or ""), period=match["period"])


# A dataset an in-place restore set aside (the VM's state before the restore, with its newer snapshots) is
# renamed `<leaf>.vmsnapd-replaced-<YYYYMMDDTHHMMSS>` beside the original: recognisably vmsnapd's, valid for
# ZFS, and never a managed dataset (config.resolve skips it and everything below it).
ASIDE_MARK = ".vmsnapd-replaced-"
_ASIDE_COMPONENT = re.compile(r"(?P<leaf>.+)\.vmsnapd-replaced-(?P<stamp>\d{8}T\d{6})")


def aside_name(dataset: str, stamp: str) -> str:
    """The name the dataset `dataset` is set aside under by a restore at `stamp` (`YYYYMMDDTHHMMSS`)."""
    if not re.fullmatch(r"\d{8}T\d{6}", stamp):
        raise ValueError(f"{stamp!r} is not a YYYYMMDDTHHMMSS stamp")
    return validate_dataset_name(f"{dataset}{ASIDE_MARK}{stamp}")


def is_aside(dataset: str) -> bool:
    """True for a dataset a restore set aside, or anything below one."""
    return any(_ASIDE_COMPONENT.fullmatch(part) for part in dataset.split("/"))


def original_of_aside(dataset: str) -> str:
    """The name `dataset` had before a restore set it (or its parent) aside; unchanged for other names."""
    return "/".join((m["leaf"] if (m := _ASIDE_COMPONENT.fullmatch(part)) else part) for part in dataset.split("/"))
