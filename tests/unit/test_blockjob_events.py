"""Waiting for a live commit (vmsnapd.blockjob): the pivot follows libvirt's READY event and the wait ends on the
job's end, not on the next re-read; a missed event costs one re-read interval; an event alone never decides.

Time is simulated: `Simulated` is the clock and the watch's condition in one — a wait lets its whole timeout pass at
once unless an event is due earlier, which it then delivers (as libvirt's event-loop thread would) at its time.
No test measures real time; each asserts at which simulated instant the pivot and the return happened. On the code
before session 19 (polling every 50 ms, events ignored) the event tests fail: the pivot waits for the next poll.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsnapd.blockjob import (BlockJobEvent, BlockJobWatch, BlockJobWatchers, JobPhase, finish_commit, job_phase)
from vmsnapd.hvtypes import BlockJobFailed

READY, COMPLETED, FAILED, CANCELED = (BlockJobEvent.READY, BlockJobEvent.COMPLETED, BlockJobEvent.FAILED,
                                      BlockJobEvent.CANCELED)
NEVER = float("inf")


class Simulated:
    """A clock (call it) and a threading.Condition stand-in: `wait(timeout)` moves the clock on through the actions
    scheduled within `timeout` (each run at its instant, as libvirt's event-loop thread would), returning early at
    the first one that notifies; else the whole timeout passes."""

    def __init__(self) -> None:
        self.now = 0.0
        self.scheduled: list[tuple[float, Callable[[], None]]] = []
        self.waits: list[float] = []
        self._notified = False

    def __call__(self) -> float:
        return self.now

    def at(self, when: float, action: Callable[[], None]) -> None:
        self.scheduled.append((when, action))
        self.scheduled.sort(key=lambda item: item[0])

    def __enter__(self) -> Simulated:
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def notify_all(self) -> None:
        self._notified = True

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        end = self.now + timeout
        while self.scheduled and self.scheduled[0][0] <= end:
            when, action = self.scheduled.pop(0)
            self.now = max(self.now, when)
            self._notified = False
            action()
            if self._notified:
                return True
        self.now = end
        return False


class Job:
    """An active commit as libvirt shows it: synced (cur == end) from `synced_at`, accepting a pivot from
    `ready_at` (QEMU's READY; libvirt refuses earlier), listed until `gone_at` or `settle` after the pivot."""

    domain, target = "web", "vda"

    def __init__(self, clock: Simulated, *, ready_at: float = NEVER, synced_at: float | None = None,
                 settle: float = 0.0, gone_at: float = NEVER):
        self.clock = clock
        self.ready_at = ready_at
        self.synced_at = ready_at if synced_at is None else synced_at
        self.settle = settle
        self.gone_at = gone_at
        self.pivots: list[float] = []  # every attempt
        self.pivoted_at: float | None = None

    def phase(self) -> JobPhase:
        now = self.clock.now
        if now >= self.gone_at:
            return JobPhase.GONE
        return JobPhase.SYNCED if now >= self.synced_at else JobPhase.COPYING

    def pivot(self) -> bool:
        self.pivots.append(self.clock.now)
        if self.clock.now < self.ready_at:
            return False  # libvirt: "block job 'vda' not ready for pivot yet"
        self.pivoted_at = self.clock.now
        self.gone_at = min(self.gone_at, self.clock.now + self.settle)
        return True


def _watch(clock: Simulated) -> BlockJobWatch:
    return BlockJobWatch("web", "vda", condition=clock)


def _finish(job: Job, watch: BlockJobWatch, clock: Simulated, *, timeout_s: float = 300.0,
            recheck_s: float = 1.0) -> None:
    finish_commit(job, watch, timeout_s=timeout_s, recheck_s=recheck_s, clock=clock)


# -- woken by events ------------------------------------------------------------------------------------------

def test_the_pivot_follows_the_ready_event_and_the_wait_ends_with_the_completed_event():
    clock = Simulated()
    watch = _watch(clock)
    job = Job(clock, ready_at=1.23, settle=0.07)
    clock.at(1.23, lambda: watch.record(READY))
    clock.at(1.30, lambda: watch.record(COMPLETED))

    _finish(job, watch, clock, recheck_s=1.0)

    assert job.pivoted_at == 1.23  # polling would have tried at 1.0 (refused) and 2.0
    assert clock.now == 1.30  # not at the next re-read (2.23)
    assert job.phase() == JobPhase.GONE


def test_a_pivot_that_completes_at_once_needs_no_second_wait():
    clock = Simulated()
    watch = _watch(clock)
    job = Job(clock, ready_at=0.4)
    clock.at(0.4, lambda: watch.record(READY))

    _finish(job, watch, clock)

    assert job.pivoted_at == clock.now == 0.4
    assert clock.waits == [1.0]  # one wait, ended by the event


def test_an_event_that_came_before_the_wait_is_not_lost():
    """READY delivered between reading the job and starting to wait (libvirt's thread is faster than ours)."""
    clock = Simulated()
    watch = _watch(clock)
    job = Job(clock, ready_at=0.0, synced_at=NEVER)  # ready, but the read shows cur behind end (the guest wrote)
    watch.record(READY)

    _finish(job, watch, clock)

    assert job.pivoted_at == 0.0 and clock.waits == []


def test_ready_is_enough_when_the_guest_keeps_cur_behind_end():
    """After READY a guest's writes put cur behind end again, and no second READY comes: the pivot is tried on the
    event (libvirt itself refuses one that is not ready), not only when a read shows cur == end."""
    clock = Simulated()
    watch = _watch(clock)
    job = Job(clock, ready_at=0.5, synced_at=NEVER)
    clock.at(0.5, lambda: watch.record(READY))

    _finish(job, watch, clock, recheck_s=1.0)

    assert job.pivoted_at == 0.5


# -- the real state decides ---------------------------------------------------------------------------------------

def test_a_missed_event_costs_at_most_one_recheck():
    clock = Simulated()
    watch = _watch(clock)
    job = Job(clock, ready_at=1.23, settle=0.07)  # no event at all

    _finish(job, watch, clock, recheck_s=0.5)

    assert job.pivoted_at == 1.5
    assert clock.now == 2.0  # gone at 1.57, seen at the next re-read


def test_an_event_alone_never_ends_the_wait():
    """A READY libvirt then refuses to pivot on, and a COMPLETED while the job is still listed: both only make the
    wait read the job again."""
    clock = Simulated()
    watch = _watch(clock)
    job = Job(clock, ready_at=1.23, synced_at=NEVER, settle=0.5)
    clock.at(0.2, lambda: watch.record(READY))  # early (e.g. of an earlier job on this disk)
    clock.at(1.23, lambda: watch.record(READY))
    clock.at(1.25, lambda: watch.record(COMPLETED))  # but the job is listed until 1.73

    _finish(job, watch, clock, recheck_s=1.0)

    assert job.pivots == [0.2, 1.2, 1.23]  # refused twice: not ready yet
    assert job.pivoted_at == 1.23
    assert clock.now == 2.25  # the re-read after COMPLETED's, not COMPLETED itself


def test_events_of_other_disks_and_domains_do_not_reach_the_watch():
    watchers = BlockJobWatchers()
    with watchers.watch("web", "vda") as vda, watchers.watch("web", "vdb") as vdb, \
            watchers.watch("db", "vda") as db, watchers.watch("web", "vda") as vda2:
        watchers.record("web", "vda", READY)
        watchers.record("web", "vdb", FAILED)
    watchers.record("web", "vda", COMPLETED)  # after the watches closed: nobody listens
    assert vda.events == vda2.events == [READY]
    assert vdb.events == [FAILED] and db.events == []


def test_watchers_take_events_from_other_threads():
    watchers = BlockJobWatchers()
    with watchers.watch("web", "vda") as watch:
        feeders = [threading.Thread(target=lambda: [watchers.record("web", "vda", READY) for _ in range(200)])
                   for _ in range(4)]
        for feeder in feeders:
            feeder.start()
        for feeder in feeders:
            feeder.join()
        assert watch.wait(0) == [READY] * 800
        assert watch.wait(0) == []


# -- failures: the same BlockJobFailed as before, named as libvirt said -----------------------------------------

@pytest.mark.parametrize("event", [FAILED, CANCELED])
def test_a_job_that_fails_or_is_canceled_is_a_block_job_failure_at_once(event):
    clock = Simulated()
    watch = _watch(clock)
    job = Job(clock, gone_at=0.4)
    clock.at(0.4, lambda: watch.record(event))

    with pytest.raises(BlockJobFailed, match=f"block job of web vda vanished before pivot \\(libvirt: {event}\\)"):
        _finish(job, watch, clock, recheck_s=1.0)
    assert clock.now == 0.4 and job.pivots == []


def test_a_job_gone_without_an_event_fails_at_the_next_read():
    clock = Simulated()
    watch = _watch(clock)
    job = Job(clock, gone_at=0.4)

    with pytest.raises(BlockJobFailed, match="vanished before pivot$"):
        _finish(job, watch, clock, recheck_s=1.0)
    assert clock.now == 1.0


def test_a_job_never_ready_times_out_at_the_deadline():
    clock = Simulated()
    watch = _watch(clock)
    job = Job(clock)

    with pytest.raises(BlockJobFailed, match="not ready after 3s; the VM keeps running on its overlay"):
        _finish(job, watch, clock, timeout_s=3.0, recheck_s=0.7)
    assert clock.now == 3.0  # the last wait is cut to the deadline


def test_a_pivot_that_never_completes_times_out():
    clock = Simulated()
    watch = _watch(clock)
    job = Job(clock, ready_at=0.5, settle=NEVER)
    clock.at(0.5, lambda: watch.record(READY))

    with pytest.raises(BlockJobFailed, match="pivot of web vda did not complete"):
        _finish(job, watch, clock, timeout_s=3.0)
    assert job.pivoted_at == 0.5 and clock.now == 3.0


# -- reading libvirt's block job info -------------------------------------------------------------------------------

def test_job_phase():
    assert job_phase({}) == job_phase(None) == JobPhase.GONE
    assert job_phase({"type": 4, "cur": 0, "end": 0, "bandwidth": 0}) == JobPhase.COPYING  # not started
    assert job_phase({"type": 4, "cur": 3, "end": 5, "bandwidth": 0}) == JobPhase.COPYING
    assert job_phase({"type": 4, "cur": 5, "end": 5, "bandwidth": 0}) == JobPhase.SYNCED


@given(st.dictionaries(st.sampled_from(["type", "cur", "end", "bandwidth"]), st.integers(min_value=0)))
def test_job_phase_answers_any_info(info):
    phase = job_phase(info)
    assert (phase == JobPhase.GONE) == (not info)
    assert (phase == JobPhase.SYNCED) == bool(info.get("end") and info.get("cur") == info["end"])
