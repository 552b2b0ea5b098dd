"""A VM group's cycle (docs/groups.md): the members' cycles run side by side, each as a lone cycle does up to its
hold (planned, pre_snapshot hook, domain XML saved). They meet at a first barrier, `ready`, so that every member
starts its hold (quiesce, live RAM copy, pause) at the same moment and a member failing before it pauses nobody.
Then each is held still (guest paused, journal `frozen`) and they meet at the second barrier. When every member
is held still, ONE step snapshots every dataset of every member; then each member resumes and finishes on its own
(RAM dump kept, thaw, journal `done`). Every member keeps its own journal record, so
`vmsnapd recover` resumes a member a crash left paused at the barrier as it would a lone cycle.

A member that ends before the barrier (planning error, hook, domain gone, hold failed) breaks it: no member is
snapshotted, all resume. The barrier times out (`[daemon] group_timeout`): never a hang with guests paused.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import partial

from vmsnapd.cycle import Cycle, CycleEnv
from vmsnapd.cycleplan import subtree_root
from vmsnapd.groupplan import Unit, member_failed, timed_out
from vmsnapd.holdstill import CycleFailed
from vmsnapd.journal import CycleState
from vmsnapd.recorder import Recorder
from vmsnapd.report import TargetOutcome
from vmsnapd.parallel import ordered_map
from vmsnapd.zfs import OPENZFS, SnapshotExists, ZfsError

log = logging.getLogger(__name__)

# zfs-fuse: at most this many `zfs snapshot` commands of a group's step at once.
SIDE_BY_SIDE_JOBS = 8

class GroupStep:
    """The barrier and the one snapshot step of a group's cycle: `arrive` (a member's cycle, held still, in place
    of its own zfs snapshot) blocks until every member arrived and the step ran; `withdraw` (a member that ended
    without arriving) makes the waiting members fail at once."""

    def __init__(self, group: str, cycles: list[Cycle], env: CycleEnv, timeout_s: float):
        self.group = group
        self.cycles = cycles
        self.env = env
        self.timeout_s = timeout_s
        self.names = cycles[0].names
        self._lock = threading.Lock()
        self._arrived: set[str] = set()
        self._failure: tuple[str, str] | None = None  # (member, reason): the first member that failed
        self._late: tuple[list[str], str] | None = None  # who was late for which barrier when it broke
        self.ran = False  # the step ran (whatever it gave)
        self.error: Exception | None = None  # the zfs step failed
        self.taken: list[str] = []  # snapshot names taken on every dataset of the group
        self.atomic = True
        self.warnings: list[str] = []
        self._ready: set[str] = set()
        self.started = False  # every member was ready: the holds began
        self._start = threading.Barrier(len(cycles), action=self._all_ready, timeout=timeout_s)
        self._barrier = threading.Barrier(len(cycles), action=self._snapshot_all, timeout=timeout_s)

    @property
    def datasets(self) -> list[str]:
        return [ds for cycle in self.cycles for ds in cycle.target.datasets]

    def ready(self, member: str, rec: Recorder) -> None:
        """`member` is about to be held still: wait until every member is (nothing is paused yet)."""
        with self._lock:
            self._ready.add(member)
        try:
            self._start.wait()
        except threading.BrokenBarrierError:
            raise CycleFailed(self.abort_reason()) from None
        rec.log(logging.INFO, "group", f"group {self.group}: every member ready, holding {member} still")

    def arrive(self, member: str, rec: Recorder) -> None:
        with self._lock:
            self._arrived.add(member)
        rec.log(logging.INFO, "group", f"group {self.group}: {member} held still, waiting for the group")
        started = time.monotonic()
        try:
            self._barrier.wait()
        except threading.BrokenBarrierError:
            raise CycleFailed(self.abort_reason()) from None
        waited_ms = int((time.monotonic() - started) * 1000)
        if self.error is not None:
            raise CycleFailed(f"group {self.group}: no snapshot: {self.error}") from self.error
        datasets = next(c.target.datasets for c in self.cycles if _member(c) == member)
        rec.taken += [f"{ds}@{name}" for ds in datasets for name in self.taken]
        rec.warnings.extend(self.warnings)
        how = ("in one zfs command" if self.atomic else
               "in several zfs commands (zfs-fuse takes one name per command, OpenZFS the datasets of one pool per "
               "command; every member was paused, so one instant)")
        rec.log(logging.INFO, "group", f"group {self.group}: {len(self.datasets)} dataset(s) of {len(self.cycles)} "
                                       f"VM(s) snapshotted {how}; {member} waited {waited_ms} ms held still "
                                       "for the others and the step")
        rec.enter(CycleState.SNAPSHOTTED)

    def withdraw(self, member: str, reason: str) -> None:
        """`member` ended before the group's step: the ones waiting fail now (nothing is snapshotted)."""
        with self._lock:
            if self.ran or member in self._arrived:  # it took part: the barrier broke without it
                return
            if self._failure is None and not (member in self._ready and not self.started):
                self._failure = (member, reason)  # (a member ready before the start broke is not the cause)
        self._start.abort()
        self._barrier.abort()

    def abort_reason(self) -> str:
        with self._lock:
            if self._failure is not None:
                return member_failed(self.group, *self._failure)
            if self._late is None:
                waited = self._arrived if self.started else self._ready
                phase = "held still" if self.started else "ready"
                self._late = ([_member(c) for c in self.cycles if _member(c) not in waited], phase)
            return timed_out(self.group, *self._late, self.timeout_s)

    def failed_member(self) -> str | None:
        with self._lock:
            return self._failure[0] if self._failure else None

    def _all_ready(self) -> None:
        with self._lock:
            self.started = True

    def _snapshot_all(self) -> None:
        """Run by the last member to arrive, with every member held still: every dataset, one command per name
        (atomic on OpenZFS; on zfs-fuse one by one, all or nothing: vmsnapd.zfs.Zfs.snapshot)."""
        with self._lock:
            self.ran = True
        datasets = self.datasets
        subtree = subtree_root(datasets, self.env.listing.datasets)
        try:
            for name in self.names:
                self._snapshot_one(datasets, subtree, name)
        except Exception as exc:  # noqa: BLE001 — every member reports it and resumes
            self.error = exc
            log.error("group %s: snapshot step failed: %s", self.group, exc)

    def _snapshot_one(self, datasets: list[str], subtree: str | None, name: str) -> None:
        try:
            if subtree:
                self.env.zfs.snapshot_recursive(subtree, name)
            elif len(datasets) > 1 and self.env.zfs.dialect != OPENZFS:
                self._side_by_side(datasets, name)
                self.atomic = False
            elif not self.env.zfs.snapshot(datasets, name):
                self.atomic = False
        except SnapshotExists:
            self.warnings.append(f"{name} already exists on {','.join(datasets)}")
            return
        self.taken.append(name)

    def _side_by_side(self, datasets: list[str], name: str) -> None:
        """zfs-fuse takes one name per command but serves several at once (on the lab two take about as long as
        one, where one after the other take twice as long): one command per dataset, side by side, while every
        member is paused. All or nothing, as Zfs.snapshot's one-by-one path: when one fails, the ones taken here
        are destroyed again, and the first error is raised."""
        errors = ordered_map(partial(self._error_of_snapshot, name=name), datasets,
                             min(len(datasets), SIDE_BY_SIDE_JOBS), "group-snapshot")
        failed = [error for error in errors if error is not None]
        if not failed:
            return
        for dataset, error in zip(datasets, errors, strict=True):
            if error is None:
                for snapshot, undo in self.env.zfs.destroy_snapshots(dataset, [name]).items():
                    log.error("group %s: could not undo partial snapshot %s@%s: %s", self.group, dataset, snapshot,
                              undo)
        raise failed[0]

    def _error_of_snapshot(self, dataset: str, name: str) -> ZfsError | None:
        try:
            self.env.zfs.snapshot([dataset], name)
        except ZfsError as exc:
            return exc
        return None


class GroupCycle:
    """One group's members, each in its own thread (not counted in max_parallel: they must be held still at
    once), meeting at one GroupStep."""

    def __init__(self, env: CycleEnv, unit: Unit, stamp: datetime, timeout_s: float):
        self.env = env
        self.unit = unit
        self.cycles = [Cycle(env, target, periods, stamp) for target, periods in unit.members]
        self.step = GroupStep(unit.group, self.cycles, env, timeout_s)
        for cycle in self.cycles:
            cycle.before_hold = partial(self.step.ready, _member(cycle))
            cycle.snapshot_step = partial(self.step.arrive, _member(cycle))

    def run(self) -> list[TargetOutcome]:
        for note in self.unit.notes:  # a configured choice, said by `config check` too: not a warning every pass
            log.info("%s", note)
        log.info("group %s: %s held still together", self.unit.group,
                 ", ".join(c.target.domain or c.target.name for c in self.cycles))
        with ThreadPoolExecutor(max_workers=len(self.cycles), thread_name_prefix=f"group-{self.unit.group}") as pool:
            outcomes = list(pool.map(self._member, self.cycles))
        failed = self.step.failed_member()
        for outcome in outcomes:
            if (outcome.domain or outcome.target) == failed and outcome.error:
                outcome.error = member_failed(self.unit.group, outcome.domain or outcome.target, outcome.error)
        return outcomes

    def _member(self, cycle: Cycle) -> TargetOutcome:
        try:
            outcome = cycle.run()
        except BaseException:
            self.step.withdraw(_member(cycle), "its cycle stopped unexpectedly")
            raise
        if not self.step.ran:
            self.step.withdraw(_member(cycle), outcome.error or "it ended before its snapshot")
        return outcome


def _member(cycle: Cycle) -> str:
    """How a member is named in the group's messages: its domain (its dataset when it has none)."""
    return cycle.target.domain or cycle.target.name
