"""Waiting for a live commit's block job: woken by libvirt's block-job events, decided by the job's real state.
No libvirt here.

The libvirt adapter feeds events in (`BlockJobWatchers.record`, from libvirt's event-loop thread: READY,
COMPLETED, FAILED, CANCELED of one disk of one domain) and hands `finish_commit` the job to read and to pivot
(`CommitJob`). An event only wakes the wait up: whether the job is ready, gone or failed is read from libvirt again
(the job's progress, and libvirt's own refusal of a pivot that is not ready). The job is also read again every
`recheck_s` without an event, so a missed event (a connection lost and reopened, a callback not yet registered)
costs at most that long. docs/how-it-works.md, "Committing back".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from typing import Protocol

from vmsnapd.hvtypes import BlockJobFailed


class BlockJobEvent(StrEnum):
    """What libvirt's VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2 says about a disk's job."""

    READY = "ready"  # a two-phase job (active commit) copied everything: it can be pivoted
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


class JobPhase(StrEnum):
    """What reading the job (virDomainGetBlockJobInfo) tells."""

    COPYING = "copying"  # the job runs and has not copied everything yet
    SYNCED = "synced"  # cur == end: everything copied as of this read
    GONE = "gone"  # no job on the disk: finished, failed, canceled — or never started


def job_phase(info: Mapping[str, int] | None) -> JobPhase:
    """The phase of a job from libvirt's block job info (`{}` when the disk has no job)."""
    if not info:
        return JobPhase.GONE
    end = info.get("end", 0)
    return JobPhase.SYNCED if end and info.get("cur") == end else JobPhase.COPYING


class CommitJob(Protocol):
    """An active commit under way on disk `target` of `domain`, as the adapter reads and pivots it."""

    domain: str
    target: str

    def phase(self) -> JobPhase:
        """Read the job now (BlockJobFailed when libvirt cannot tell)."""

    def pivot(self) -> bool:
        """Pivot the disk onto its base: True when done; False when libvirt says the job is not ready yet;
        BlockJobFailed for any other refusal."""


class BlockJobWatch:
    """The block-job events of one disk of one domain while its commit is waited for. `record` may be called from
    any thread; `condition` is replaceable for tests (a clock that moves only when waited on)."""

    def __init__(self, domain: str, target: str, condition: threading.Condition | None = None):
        self.domain = domain
        self.target = target
        self.events: list[BlockJobEvent] = []
        self._taken = 0
        self._condition = condition or threading.Condition()

    def record(self, event: BlockJobEvent) -> None:
        with self._condition:
            self.events.append(event)
            self._condition.notify_all()

    def wait(self, timeout: float) -> list[BlockJobEvent]:
        """Up to `timeout` seconds, less when an event arrives — none when one arrived since the last wait. Returns
        the events new since the last wait (possibly none: the time was up)."""
        with self._condition:
            if len(self.events) == self._taken and timeout > 0:
                self._condition.wait(timeout)
            new = self.events[self._taken:]
            self._taken = len(self.events)
            return new

    def said(self, *events: BlockJobEvent) -> bool:
        with self._condition:
            return any(e in events for e in self.events)


class BlockJobWatchers:
    """The open watches by (domain, target); events arrive on libvirt's event-loop thread, watches are opened and
    closed by the cycles' threads."""

    def __init__(self) -> None:
        self._watches: dict[tuple[str, str], list[BlockJobWatch]] = {}
        self._lock = threading.Lock()

    def record(self, domain: str, target: str, event: BlockJobEvent) -> None:
        with self._lock:
            watches = list(self._watches.get((domain, target), ()))
        for watch in watches:
            watch.record(event)

    @contextmanager
    def watch(self, domain: str, target: str) -> Iterator[BlockJobWatch]:
        watch = BlockJobWatch(domain, target)
        key = (domain, target)
        with self._lock:
            self._watches.setdefault(key, []).append(watch)
        try:
            yield watch
        finally:
            with self._lock:
                self._watches[key].remove(watch)
                if not self._watches[key]:
                    del self._watches[key]


def finish_commit(job: CommitJob, watch: BlockJobWatch, *, timeout_s: float, recheck_s: float,
                  clock: Callable[[], float] = time.monotonic) -> None:
    """Pivot `job` as soon as it is ready, then wait until it is gone, within `timeout_s`. Wakes on every event of
    `watch` and every `recheck_s`; each time the job is read again. Raises BlockJobFailed: the job vanished (failed,
    canceled) before the pivot, libvirt refused the pivot, or the time was up."""
    deadline = clock() + timeout_s
    while not _pivoted(job, watch):
        if clock() >= deadline:
            raise BlockJobFailed(
                f"blockcommit of {job.domain} {job.target} not ready after {timeout_s:.0f}s; "
                "the VM keeps running on its overlay (safe); `vmsnapd recover` finishes it")
        watch.wait(min(recheck_s, max(0.0, deadline - clock())))
    # The pivot completes asynchronously (libvirt's call usually waits for it): until the job is gone.
    while job.phase() != JobPhase.GONE:
        if clock() >= deadline:
            raise BlockJobFailed(f"pivot of {job.domain} {job.target} did not complete")
        watch.wait(min(recheck_s, max(0.0, deadline - clock())))


def _pivoted(job: CommitJob, watch: BlockJobWatch) -> bool:
    """Pivot when the job reads as synced or libvirt said READY (after READY a guest's writes can put `cur` behind
    `end` again, and no second READY comes; libvirt itself refuses a pivot that is not ready). False: not yet."""
    phase = job.phase()
    if phase == JobPhase.GONE:
        said = [e.value for e in (BlockJobEvent.FAILED, BlockJobEvent.CANCELED) if watch.said(e)]
        raise BlockJobFailed(f"block job of {job.domain} {job.target} vanished before pivot"
                             + (f" (libvirt: {', '.join(said)})" if said else ""))
    if phase == JobPhase.COPYING and not watch.said(BlockJobEvent.READY):
        return False
    return job.pivot()
