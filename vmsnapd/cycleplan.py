"""What a cycle will do, decided from plain data: no libvirt, no I/O (vmsnapd/cycle.py carries it out).

`plan_cycle` takes the target's domain, the state the domain is in when the cycle starts, its policy and its
disks, and decides the method (plain / overlay / pause), whether a RAM dump is wanted, whether to quiesce, where
each overlay goes and which disks are left out. The smaller verdicts a cycle needs on the way (the guest agent's
answers, ram_dir's room, how to commit an overlay back, when several datasets can be snapshotted as one) are
functions here too, so every decision can be tested in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from vmsnapd.config import DatasetPolicy
from vmsnapd.hvtypes import PAUSED, RUNNING
from vmsnapd.journal import OverlayRecord
from vmsnapd.models import CycleMethod
from vmsnapd.overlaynames import overlay_file_name

# The domain states the plan tells apart: the adapter's RUNNING / PAUSED (vmsnapd.hvtypes), and GONE for a
# domain libvirt no longer knows.
GONE = "gone"
ACTIVE = (RUNNING, PAUSED)


class Hold(StrEnum):
    """How the guest's disks are held still while zfs takes them."""

    OVERLAY = "overlay"  # external snapshot: every disk onto a qcow2 overlay (+ RAM), the guest keeps running
    MANUAL = "manual"  # libvirt snapshot=manual: RAM saved, the guest left paused
    SUSPEND = "suspend"  # a plain pause, no RAM
    ALREADY_PAUSED = "already_paused"  # someone else paused it and no RAM is taken: nothing to do


@dataclass(frozen=True)
class CyclePlan:
    method: CycleMethod
    memory: bool  # a RAM dump is wanted (ram_dir's room decides later: memory_verdict)
    quiesce: str  # "off", "auto" or "required": "off" unless the guest runs
    overlays: tuple[OverlayRecord, ...]  # method "overlay": where each captured disk's overlay goes
    captured: tuple[str, ...]  # disk targets taken
    skipped: tuple[str, ...]  # disk targets left out (read-only, shared, exclude_disks)
    was_paused: bool  # the guest was paused when the cycle began (it stays paused)
    # The RAM is captured with the guest running (policy `live`) — never for a guest paused already: it writes
    # nothing, so a capture that keeps it paused holds the same RAM, with no live-capture caveat to warn about.
    live: bool = False

    def hold(self, with_memory: bool) -> Hold:
        """The way to hold the disks still, once it is known whether the RAM can be written."""
        if self.method == "overlay":
            return Hold.OVERLAY
        if with_memory:
            return Hold.MANUAL
        return Hold.ALREADY_PAUSED if self.was_paused else Hold.SUSPEND


def plan_cycle(*, domain: str | None, vm_state: str | None, policy: DatasetPolicy,
               disks: Sequence[tuple[str, str]], skipped: Sequence[str], overlay_dir: Path,
               stamp: str) -> CyclePlan:
    """`vm_state`: the domain's state when the cycle starts (None: no domain); `disks`: (target, source) of every
    disk to capture; `stamp`: the cycle's timestamp text (names the overlays)."""
    if domain is None or vm_state not in ACTIVE:
        return CyclePlan(method="plain", memory=False, quiesce="off", overlays=(), captured=(),
                         skipped=tuple(skipped), was_paused=False)
    method: CycleMethod = policy.method if vm_state == RUNNING else "pause"
    overlays = tuple(OverlayRecord(target=target, base_path=source,
                                   overlay_path=str(overlay_dir / overlay_file_name(domain, target, stamp)))
                     for target, source in disks) if method == "overlay" else ()
    return CyclePlan(method=method, memory=policy.memory,
                     quiesce=policy.quiesce if vm_state == RUNNING else "off", overlays=overlays,
                     captured=tuple(t for t, _ in disks), skipped=tuple(skipped), was_paused=vm_state == PAUSED,
                     live=policy.live and vm_state == RUNNING)


@dataclass(frozen=True)
class Verdict:
    """A step's decision: go ahead or not, and what to say. `fail` set: the cycle fails with that message."""

    go: bool
    fail: str | None = None
    warning: str | None = None  # for the outcome (and the log, unless `logged` says it otherwise)
    logged: str | None = None  # the log line, when it differs from the warning
    info: str | None = None  # an INFO line only


def quiesce_verdict(domain: str, mode: str, has_channel: bool, answers: bool | None) -> Verdict:
    """Freeze the guest's file systems? `answers`: the agent answered a ping (None: not asked, no channel)."""
    required = mode == "required"
    if mode == "off":
        return Verdict(go=False)
    if not required and not has_channel:
        # No agent channel configured: nothing to warn about every cycle; the RAM dump (or the crash-consistent
        # disks) is what this VM gets, as its admin set it up.
        return Verdict(go=False, info="no guest agent channel; not quiesced")
    if not answers:
        if required:
            return Verdict(go=False, fail=f"guest agent of {domain} does not answer and quiesce = \"required\"")
        return Verdict(go=False, warning="guest agent does not answer: snapshot not quiesced",
                       logged="guest agent does not answer; not quiesced")
    return Verdict(go=True)


def fs_freeze_failed(domain: str, mode: str, error: str) -> Verdict:
    """The agent's freeze itself failed: the cycle goes on crash-consistent unless quiescing is required."""
    if mode == "required":
        return Verdict(go=False, fail=f"fsfreeze of {domain} failed: {error}")
    return Verdict(go=False, warning=f"fsfreeze failed ({error}): snapshot not quiesced")


def space_problem(free: Mapping[str, int], memory: int, factor: float) -> str | None:
    """The first folder (of `free`: folder -> free bytes) without room for about `memory` * `factor` bytes."""
    for where, room in free.items():
        if room < memory * factor:
            return f"{where} has {room >> 20} MiB free, the RAM dump needs about {memory >> 20} MiB"
    return None


def memory_verdict(problem: str | None, on_failure: str) -> Verdict:
    """Before the guest is touched: the RAM cannot be written (`problem`): fail, or go on disk-only."""
    if problem is None:
        return Verdict(go=True)
    if on_failure == "fail":
        return Verdict(go=False, fail=f"{problem} (on_memory_failure = \"fail\")")
    return Verdict(go=False, warning=f"{problem}; taking a disk-only snapshot",
                   logged=f"{problem}; disk-only snapshot (on_memory_failure)")


def kept_dump_failed(problem: str, on_failure: str) -> Verdict:
    """After the snapshot: the RAM dump could not be stored. The snapshot stays (a valid disk-only restore
    point) either way; `on_memory_failure` decides whether the cycle reports a failure."""
    if on_failure == "fail":
        return Verdict(go=False, fail=f"{problem} (on_memory_failure = \"fail\"); the snapshot stays, disk only")
    return Verdict(go=True, warning=f"{problem}; the snapshot is disk-only",
                   logged=f"{problem}; disk-only (on_memory_failure)")


class CommitWay(StrEnum):
    """How an overlay goes back into its base file, by the state of its domain."""

    LIVE = "live"  # running or paused: active blockcommit + pivot
    OFFLINE = "offline"  # shut off (or crashed…): qemu-img commit + the definition pointed back at the base
    FILE = "file"  # the domain is gone: qemu-img commit of the overlay file alone


def commit_way(vm_state: str) -> CommitWay:
    if vm_state in ACTIVE:
        return CommitWay.LIVE
    return CommitWay.FILE if vm_state == GONE else CommitWay.OFFLINE


def subtree_root(datasets: Sequence[str], existing: Iterable[str]) -> str | None:
    """The dataset whose whole subtree (among `existing`) is exactly `datasets` (two or more), else None: one
    `zfs snapshot -r` of it is atomic on every ZFS."""
    if len(datasets) < 2:
        return None
    root = min(datasets, key=len)
    below = {d for d in existing if d == root or d.startswith(root + "/")}
    return root if below == set(datasets) else None
