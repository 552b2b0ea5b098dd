"""A cycle's one voice: its journal record, its log lines, its warnings, and dry run in one place.

Every state change goes through `enter` (the journal write comes before the step it announces; in dry run the
record is only updated in memory), every log line through `log` (prefixed "dry-run: " in dry run), and every
file the cycle removes of its own through `discard` (nothing removed in dry run).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from vmsnapd.journal import CycleRecord, CycleState, Journal
from vmsnapd.logsetup import dry_run_prefix, fields

log = logging.getLogger("vmsnapd.cycle")


class Recorder:
    def __init__(self, journal: Journal, record: CycleRecord, *, dry_run: bool, describe: str):
        self.journal = journal
        self.record = record
        self.dry_run = dry_run
        self.prefix = dry_run_prefix(dry_run)
        self.describe = describe  # "dataset=… domain=… snapshot=…" for every line
        self.started = time.monotonic()
        self.warnings: list[str] = []
        self.taken: list[str] = []  # full snapshot names made by this cycle

    @property
    def state(self) -> CycleState:
        return self.record.state

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    # -- the journal ---------------------------------------------------------------------------------------------

    def begin(self) -> None:
        """Raises JournalError/OSError when the record cannot be written: the cycle must not start."""
        if not self.dry_run:
            self.record = self.journal.begin(self.record)

    def enter(self, state: CycleState, **changes: object) -> None:
        """Record `state` (and `changes`) before the step it announces."""
        if not self.dry_run:
            self.record = self.journal.update(self.record, state=state, **changes)
        else:
            self.record = self.record.model_copy(update={"state": state, **changes})
        self.log(logging.DEBUG, f"→ {state}")

    def note(self, **changes: object) -> None:
        """Record `changes` in the current state."""
        self.enter(self.record.state, **changes)

    def finish(self) -> None:
        """Forget the record: the VM is safe."""
        if not self.dry_run:
            self.journal.finish(self.record)

    @property
    def vm_safe(self) -> bool:
        """Nothing the record says needs `recover`: no overlay in use, no guest paused or frozen by the cycle."""
        return not (self.record.overlays or self.record.paused_by_us or self.record.fs_frozen)

    # -- what is said --------------------------------------------------------------------------------------------

    def log(self, level: int, event: str, extra: str = "") -> None:
        log.log(level, "%scycle %s %s elapsed_ms=%d%s", self.prefix, event, self.describe, self.elapsed_ms(),
                f": {extra}" if extra else "", extra=fields(pause_ms=self.record.pause_ms))

    def warn(self, event: str, warning: str, logged: str | None = None) -> None:
        """A warning for the outcome, logged as `logged` (default: the warning itself)."""
        self.warnings.append(warning)
        self.log(logging.WARNING, event, logged or warning)

    # -- our own files -------------------------------------------------------------------------------------------

    def discard(self, path: str | Path | None) -> bool:
        """Remove a file of the cycle's own; True when it is gone (or was never made). One that cannot be removed
        (a read-only or failing file system) is a warning naming it, never an exception in the middle of a clean-up:
        False, and the caller keeps it in the record for `recover`."""
        if path is None or self.dry_run:
            return True
        try:
            Path(path).unlink(missing_ok=True)
        except OSError as exc:
            if not os.path.lexists(path):
                return True  # never made: a read-only file system refuses even that (EROFS, not ENOENT)
            self.warn("cleanup", f"cannot delete {path}: {exc}")
            return False
        return True

    def remains(self, path: str | None) -> str | None:
        """`discard` the file; what the record must still name: `path` when it could not be deleted, else None."""
        return None if self.discard(path) else path
