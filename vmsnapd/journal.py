"""The crash journal: one record per VM cycle in flight, read back by `recover` after a crash.

A cycle writes its record before each step (`begin`, then `update` per state transition) and removes
it when it is done (`finish`). Whatever is left in `state_dir/cycles/` after a crash tells recovery
exactly what to finish or undo: which disks sit on which overlay, whether the guest is frozen or was
paused by us, where the fresh RAM file lies.

Every write is atomic and durable (temp file in the same directory, fsync, rename, fsync of the
directory), so a record on disk is always one complete version, never a torn mix. Recovery must never
crash on a bad record: unreadable files are reported with a warning and listed apart.
"""

from __future__ import annotations

import hashlib
import logging
import os
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from urllib.parse import quote

from pydantic import BaseModel, Field, ValidationError
from pydantic_core import from_json

from vmsnapd.models import CycleMethod
from vmsnapd.files import (
    check_folder,
    ensure_private_directory,
    fsync_directory,
    temp_path_for,
    write_file_atomically,
)
from vmsnapd.names import encode_name

log = logging.getLogger(__name__)

CYCLES_SUBDIR = "cycles"
RECORD_SUFFIX = ".json"
# The stem limit of the legacy file names (_legacy_file_name).
_LEGACY_MAX_STEM = 200



class CycleState(StrEnum):
    """Where a cycle is: written to its journal record before each step (docs/how-it-works.md, "States").

    The values are what journal files hold (files written by earlier versions load unchanged). "freezing",
    "frozen" and "unfrozen" are about the DISKS being held still (overlay, manual snapshot or pause), not about
    the guest agent's file-system freeze, which is "quiescing"/"quiesced" (and the record's `fs_frozen`).
    """

    STARTED = "started"
    XML_SAVED = "xml_saved"  # the domain XML is in the first dataset
    QUIESCING = "quiescing"  # asking the guest agent to freeze the file systems
    QUIESCED = "quiesced"
    FREEZING = "freezing"  # holding the disks still; the record says what will be true (overlays, RAM file, pause)
    FROZEN = "frozen"  # the disks are held still
    SNAPSHOTTED = "snapshotted"  # the zfs snapshots are taken
    COMMIT_FAILED = "commit_failed"  # some disks still run on their overlays (`recover` finishes)
    COMMITTED = "committed"  # every overlay committed back and deleted
    RESUMED = "resumed"  # the guest the cycle paused runs again
    UNFROZEN = "unfrozen"  # the disks are free again
    DUMP_KEPT = "dump_kept"  # the RAM dump is in ram_dir
    DONE = "done"
    FAILED = "failed"


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class OverlayRecord(BaseModel):
    """One disk moved onto an overlay: recovery commits `overlay_path` back into `base_path`."""

    target: str
    overlay_path: str
    base_path: str


class CycleRecord(BaseModel):
    cycle_id: str = Field(min_length=1)
    domain: str | None = None
    datasets: list[str]
    snapshot_names: list[str]
    stamp: str
    method: CycleMethod
    state: CycleState
    overlays: list[OverlayRecord] = []
    ram_file: str | None = None  # the fresh RAM file in overlay_dir, until ramstore has taken it
    fs_frozen: bool = False
    quiesced: bool = False
    paused_by_us: bool = False
    pause_ms: int | None = None
    ram_dump: str | None = None  # where ramstore keeps it since
    pid: int = Field(default_factory=os.getpid)
    started_at: str = Field(default_factory=utc_now_iso)
    updated_at: str = Field(default_factory=utc_now_iso)
    error: str | None = None


class UnreadableRecord(BaseModel):
    path: Path
    reason: str


class JournalScan(BaseModel):
    records: list[CycleRecord]
    unreadable: list[UnreadableRecord]


class JournalError(Exception):
    """The journal could not record a cycle (a duplicate cycle id, or the state dir is unusable)."""


def cycle_file_name(cycle_id: str) -> str:
    """The file name of a cycle id such as `rpool/VM/win-2026-11-29_01:00:00`: names.encode_name, the one way
    vmsnapd turns a name into a file name (safe, readable, injective; "a/b" and "a_b" do not collide; never
    ".", ".." or a hidden temp file)."""
    return encode_name(cycle_id) + RECORD_SUFFIX


def _legacy_file_name(cycle_id: str) -> str:
    """The name vmsnapd before names.encode_name gave a record (`urllib.parse.quote`). Only read, so that a
    record a crash left under it is still finished and never doubled: every write and `finish` removes it."""
    stem = quote(cycle_id, safe="@:+,=")
    if stem.startswith("."):
        stem = "%2E" + stem[1:]
    if len(stem) > _LEGACY_MAX_STEM:
        digest = hashlib.sha256(cycle_id.encode()).hexdigest()[:16]
        stem = f"{stem[: _LEGACY_MAX_STEM - 17]}~{digest}"
    return stem + RECORD_SUFFIX


class NewerRecord(ValueError):
    """A record this vmsnapd cannot act on without losing what it says: fields or a state it does not know."""


class ForeignName(ValueError):
    """A record in a file of another name than vmsnapd gives its cycle."""


_NEWER_HINT = ("written by a newer vmsnapd? Not acted on, so nothing it records is lost: finish it with that "
               "version's `vmsnapd recover`")


def read_record(data: bytes) -> CycleRecord:
    """A journal file's bytes → its record; ValueError (NewerRecord, pydantic's ValidationError, JSON errors)
    when it is not one this version can act on.

    A field this version does not know is refused, not dropped: the record describes a cycle in flight, and
    what an unknown field says (a file to delete, a disk to commit back) would be lost when recovery acts on
    the rest and finishes the record. An unknown state is refused the same way (recovery would guess)."""
    raw = from_json(data)  # ValueError for anything not JSON, also nesting too deep
    if isinstance(raw, dict):
        unknown = sorted(str(key) for key in raw if key not in CycleRecord.model_fields)
        if unknown:
            raise NewerRecord(f"field(s) {', '.join(map(repr, unknown))} unknown to this vmsnapd: {_NEWER_HINT}")
        state = raw.get("state")
        if isinstance(state, str) and state not in {member.value for member in CycleState}:
            raise NewerRecord(f"state {state!r} unknown to this vmsnapd: {_NEWER_HINT}")
    return CycleRecord.model_validate(raw)


class Journal:
    """Records of cycles in flight in `state_dir/cycles/<cycle_id>.json` (0700 directory, 0600 files)."""

    def __init__(self, state_dir: Path):
        self.directory = state_dir / CYCLES_SUBDIR

    def path_of(self, cycle_id: str) -> Path:
        return self.directory / cycle_file_name(cycle_id)

    def _legacy_path_of(self, cycle_id: str) -> Path | None:
        """Where an older vmsnapd wrote this cycle's record, when that is another name."""
        legacy = self.directory / _legacy_file_name(cycle_id)
        return None if legacy == self.path_of(cycle_id) else legacy

    def begin(self, record: CycleRecord) -> CycleRecord:
        ensure_private_directory(self.directory)
        for path in (self.path_of(record.cycle_id), self._legacy_path_of(record.cycle_id)):
            if path is not None and path.exists():
                # Two cycles with one id would overwrite each other's recovery information.
                raise JournalError(f"cycle {record.cycle_id} is already in the journal ({path})")
        self._write(record)
        log.debug("journal: begin %s in state %s", record.cycle_id, record.state)
        return record

    def update(self, record: CycleRecord, **changes: object) -> CycleRecord:
        """Write a new version of `record` with `changes` applied; returns it (records are not mutated)."""
        if "cycle_id" in changes and changes["cycle_id"] != record.cycle_id:
            raise JournalError("a journal record cannot change its cycle_id")
        # Reading refuses unknown keys (read_record: a newer version's record is left alone); writing one is
        # a typo that would silently lose recovery information.
        unknown = sorted(set(changes) - set(CycleRecord.model_fields))
        if unknown:
            raise JournalError(f"unknown cycle record fields: {', '.join(unknown)}")
        # model_copy(update=…) skips validation; a bad value must fail here, not in recovery.
        updated = CycleRecord.model_validate(
            {**record.model_dump(), **changes, "updated_at": utc_now_iso()}
        )
        self._write(updated)
        log.debug("journal: %s now in state %s", updated.cycle_id, updated.state)
        return updated

    def finish(self, record: CycleRecord) -> None:
        """Forget a cycle that is complete (or fully undone). Idempotent."""
        self._remove(self.path_of(record.cycle_id))
        self._remove(self._legacy_path_of(record.cycle_id))
        if self.directory.is_dir():
            fsync_directory(self.directory)
        log.debug("journal: finished %s", record.cycle_id)

    def scan(self) -> JournalScan:
        """Every record on disk, and apart from them every file that could not be read as one."""
        records: list[CycleRecord] = []
        unreadable: list[UnreadableRecord] = []
        if not os.path.lexists(self.directory):
            return JournalScan(records=records, unreadable=unreadable)
        try:
            # Records in a folder someone else may write could be forged: none of them is trusted.
            check_folder(self.directory)
        except OSError as exc:
            log.warning("journal: not reading %s: %s", self.directory, exc)
            return JournalScan(records=records, unreadable=[UnreadableRecord(path=self.directory, reason=str(exc))])
        for path in sorted(self.directory.iterdir()):
            # Temp files are a write cut short by a crash: the record beside them is the valid version.
            if path.name.startswith(".") or not path.name.endswith(RECORD_SUFFIX):
                continue
            if path.is_symlink() or not path.is_file():
                unreadable.append(UnreadableRecord(path=path, reason="not a regular file (a link?): not trusted"))
                continue
            try:
                record = read_record(path.read_bytes())
                self._check_named(path, record)
                records.append(record)
            except (OSError, ValueError, ValidationError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning("journal: cannot read cycle record %s, leaving it for inspection: %s", path, reason)
                unreadable.append(UnreadableRecord(path=path, reason=reason))
        return JournalScan(records=records, unreadable=unreadable)

    def _check_named(self, path: Path, record: CycleRecord) -> None:
        """A record is vmsnapd's as written only under its cycle's file name (or the legacy one): `finish` removes
        exactly that name, so a copy or a renamed file would be acted on again by every recover, never closed."""
        if path.name not in (cycle_file_name(record.cycle_id), _legacy_file_name(record.cycle_id)):
            raise ForeignName(f"the file name is not the one vmsnapd gives cycle {record.cycle_id!r} "
                              f"({cycle_file_name(record.cycle_id)}): a copy or a renamed record? Not acted on")

    def pending(self) -> list[CycleRecord]:
        """The readable records of cycles a crash interrupted (unreadable ones are logged and skipped)."""
        return self.scan().records

    def _write(self, record: CycleRecord) -> None:
        ensure_private_directory(self.directory)
        path = self.path_of(record.cycle_id)
        try:
            write_file_atomically(path, record.model_dump_json(indent=1).encode())
            if self._remove(self._legacy_path_of(record.cycle_id)):  # the new version replaces it
                fsync_directory(self.directory)
        except OSError as exc:
            raise JournalError(f"cannot write journal record {path}: {exc}") from exc

    @staticmethod
    def _remove(path: Path | None) -> bool:
        """Unlink a record and its temp file, when there (True: something was); the caller fsyncs the directory."""
        removed = False
        for leftover in (path, temp_path_for(path)) if path is not None else ():
            try:
                leftover.unlink()
                removed = True
            except FileNotFoundError:
                pass
        return removed
