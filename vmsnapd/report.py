"""Typed results of a pass, shared by `once`, `snapshot`, the daemon and the CLI renderers."""

from __future__ import annotations

from pydantic import BaseModel, Field


class TargetOutcome(BaseModel):
    """What happened to one target (a dataset, or the datasets of one VM) in one pass."""

    action: str  # "take" or "prune"
    target: str
    domain: str | None = None
    datasets: list[str] = Field(default_factory=list)
    snapshots: list[str] = Field(default_factory=list)  # full names taken / destroyed (or that would be)
    kept: list[str] = Field(default_factory=list)  # full names a hook or a hold kept
    warnings: list[str] = Field(default_factory=list)
    error: str | None = None
    duration_ms: int = 0
    pause_ms: int | None = None  # how long the guest stood still in a VM cycle (libvirt lifecycle events)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


class PassReport(BaseModel):
    outcomes: list[TargetOutcome] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)  # failures not tied to one target (listing, lock)
    dumps_deleted: list[str] = Field(default_factory=list)
    dump_bytes_freed: int = 0
    dry_run: bool = False

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes if not o.ok) + len(self.errors)

    def merge(self, other: "PassReport") -> "PassReport":
        return PassReport(outcomes=self.outcomes + other.outcomes, errors=self.errors + other.errors,
                          dumps_deleted=self.dumps_deleted + other.dumps_deleted,
                          dump_bytes_freed=self.dump_bytes_freed + other.dump_bytes_freed,
                          dry_run=self.dry_run or other.dry_run)
