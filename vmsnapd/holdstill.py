"""The three ways a cycle holds a VM's disks still while zfs takes them (vmsnapd.cycleplan.Hold), as strategies.

Each strategy can `freeze_disks` (record what will be true, then ask libvirt), `unfreeze_disks` (commit the
overlays back or resume the guest it paused) and `settle` (the freeze failed: find out what libvirt really did and
undo it). "freeze" here is about the disks; the guest agent's file-system freeze is `Hypervisor.fs_freeze`,
done by the cycle around `freeze_disks` (quiescing).
"""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from pathlib import Path

from vmsnapd.commitback import commit_back, state_or_gone
from vmsnapd.files import ensure_folder
from vmsnapd.cycleplan import ACTIVE, CommitWay, CyclePlan, Hold
from vmsnapd.hvtypes import PAUSED, HypervisorError, HypervisorUnavailable, OverlayPathTaken
from vmsnapd.ports import HypervisorPort as Hypervisor
from vmsnapd.journal import CycleState, OverlayRecord
from vmsnapd.recorder import Recorder

COMMIT_ATTEMPTS = 3
COMMIT_RETRY_DELAY_S = 1.0
# How long a failed freeze waits for a restarting libvirtd before leaving its record to `recover` (a restart
# measured on the lab answers again in 1-3 s).
SETTLE_WAIT_S = 30.0


class CycleFailed(Exception):
    pass


class StillOnOverlay(HypervisorError):
    """Every commit attempt failed: the VM runs on (some of) its overlays, which is safe; `recover` finishes."""

    def __init__(self, disks: list[tuple[str, str]], last: Exception):
        self.disks = disks  # (target, overlay path)
        self.last = last
        super().__init__(str(last))


class HoldStill(ABC):
    """The common part: the journal around the libvirt call, and the settling of a failed one."""

    guest_runs = False  # whether the guest runs (and its agent answers) while its disks are held still

    def __init__(self, hv: Hypervisor, rec: Recorder, plan: CyclePlan, domain: str, memory_file: str | None, *,
                 live: bool, overlay_dir: Path, disk_formats: dict[str, str] | None = None):
        self.hv = hv
        self.disk_formats = disk_formats or {}  # target -> the format libvirt gives the disk now (driver type)
        self.rec = rec
        self.plan = plan
        self.domain = domain
        self.memory_file = memory_file
        self.live = live
        self.overlay_dir = overlay_dir
        self.not_ours: set[str] = set()  # overlay paths taken by someone else meanwhile: the clean-up spares them

    # -- what each strategy says ------------------------------------------------------------------------------

    @abstractmethod
    def intent(self) -> dict:
        """What the record must say before libvirt is asked (so `recover` can undo it)."""

    @abstractmethod
    def hold(self) -> None:
        """The libvirt call."""

    @abstractmethod
    def unfreeze_disks(self) -> None:
        """Commit the overlays back, or resume the guest the cycle paused; the record says what is left."""

    @abstractmethod
    def undo(self, now: str) -> None:
        """After a failed freeze, with the domain still there (`now`): undo what libvirt did anyway."""

    # -- the steps --------------------------------------------------------------------------------------------

    def freeze_disks(self) -> None:
        self.rec.enter(CycleState.FREEZING, **self.intent())
        try:
            self.hold()
        except HypervisorError as exc:
            self.settle(exc)
            raise
        try:
            self.rec.enter(CycleState.FROZEN)
        except Exception:
            self.unfreeze_disks()  # never leave the guest held because the journal cannot say it is
            raise

    def settle(self, exc: Exception) -> None:
        """The freeze failed: find out what libvirt really did, undo it, and leave a journal record that says
        only what is still true (nothing, normally: the external snapshot is atomic)."""
        try:
            now = self._inspect()
        except HypervisorError as err:
            self.rec.log(logging.ERROR, "freeze", f"failed ({exc}) and the domain cannot be inspected: {err}")
            return  # keep the record as it is: recover will look again
        if now not in ACTIVE:
            self._forget_intent()
            was = PAUSED if self.plan.was_paused else "running"
            raise CycleFailed(f"domain {self.domain} is no longer running (was {was}, now {now}): it stopped during "
                              f"the cycle; no snapshot taken ({exc})") from exc
        self.undo(now)
        self._forget_intent()

    def _inspect(self) -> str:
        """The domain's state after a failed freeze. A libvirtd that is restarting (the freeze failed because its
        connection dropped) is waited for, up to SETTLE_WAIT_S: libvirt may have switched the guest to its overlays
        before it went, and only this cycle can take them back at once — else they wait for the next `recover`."""
        deadline = time.monotonic() + SETTLE_WAIT_S
        delay = 0.25
        while True:
            try:
                return state_or_gone(self.hv, self.domain)
            except HypervisorUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 4.0)

    def _forget_intent(self) -> None:
        """None of the files is in use any more: they are ours and half-made. One that cannot be deleted stays
        in the record (recover deletes it)."""
        kept = [o for o in self.plan.overlays
                if o.overlay_path not in self.not_ours and not self.rec.discard(o.overlay_path)]
        self.rec.enter(CycleState.FREEZING, overlays=kept, ram_file=self.rec.remains(self.rec.record.ram_file),
                       paused_by_us=False)


class OverlayHold(HoldStill):
    """libvirt external snapshot: every disk onto a fresh overlay (atomic), the RAM to a file; the guest runs on.

    The overlays are made by vmsnapd (qemu-img) right before the libvirt call, after the record names them, and
    libvirt is asked to use them as they are: libvirt making them itself would run a `blockdev-create` job per
    disk while the guest stands still after its live RAM pass (docs/how-it-works.md, "Pre-created overlays")."""

    guest_runs = True

    def intent(self) -> dict:
        self._check_overlay_paths()
        return {"overlays": list(self.plan.overlays), "ram_file": self.memory_file}

    def _check_overlay_paths(self) -> None:
        """Verify, then act: overlay_dir is a folder root may write in, and nothing sits where this cycle's
        overlays go (it would not be this cycle's: never overwritten, never deleted by its clean-up)."""
        if not self.rec.dry_run:  # a dry run creates no folder
            ensure_folder(self.overlay_dir, 0o711, set_mode=False)  # 0711: QEMU must reach its overlays
        there = [o.overlay_path for o in self.plan.overlays if os.path.lexists(o.overlay_path)]
        if there:
            raise CycleFailed(f"{', '.join(there)} exists already: not this cycle's overlay, left alone; "
                              "no snapshot taken")

    def hold(self) -> None:
        for o in self.plan.overlays:  # recorded (FREEZING) before: a failure or crash from here on deletes them
            try:
                self.hv.create_overlay(o.overlay_path, o.base_path, self.disk_formats[o.target])
            except OverlayPathTaken:
                self.not_ours.add(o.overlay_path)
                raise
        self.hv.snapshot_external(self.domain, {o.target: o.overlay_path for o in self.plan.overlays},
                                  self.memory_file, live=self.live, skip_disks=list(self.plan.skipped), reuse=True)

    def unfreeze_disks(self) -> None:
        failed: list[tuple[str, str]] = []
        last: Exception | None = None
        for overlay in self.rec.record.overlays:
            error = self._commit_with_retries(overlay)
            if error is None:
                self.rec.discard(overlay.overlay_path)
            else:
                failed.append((overlay.target, overlay.overlay_path))
                last = error
        if failed:
            self.rec.enter(CycleState.COMMIT_FAILED,
                           overlays=[o for o in self.rec.record.overlays if (o.target, o.overlay_path) in failed])
            raise StillOnOverlay(failed, last)
        self.rec.enter(CycleState.COMMITTED, overlays=[])

    def undo(self, now: str) -> None:
        on_overlay = {d.target for d in self.hv.overlay_disks(self.domain, self.overlay_dir)}
        if on_overlay:  # should not happen (atomic), but if it did: the normal path commits them back
            self.rec.enter(CycleState.FROZEN,
                           overlays=[o for o in self.rec.record.overlays if o.target in on_overlay])
            self.unfreeze_disks()

    def _commit_with_retries(self, overlay: OverlayRecord) -> Exception | None:
        """Bring one disk back onto its base (vmsnapd.commitback), retried; None when done, else the last error."""
        last: Exception | None = None
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                way, _base = commit_back(self.hv, self.domain, overlay.target, overlay.overlay_path,
                                         state_or_gone(self.hv, self.domain))
                self._report(way, overlay)
                return None
            except HypervisorError as exc:
                last = exc
                self.rec.log(logging.WARNING, "commit", f"{overlay.target} attempt {attempt}/{COMMIT_ATTEMPTS}: {exc}")
            if attempt < COMMIT_ATTEMPTS:
                time.sleep(COMMIT_RETRY_DELAY_S * attempt)
        return last

    def _report(self, way: CommitWay, overlay: OverlayRecord) -> None:
        if way == CommitWay.FILE:
            self.rec.warn("commit", f"domain {self.domain} vanished during the cycle; overlay of {overlay.target} "
                                    "merged into its base")
        elif way == CommitWay.OFFLINE:
            self.rec.warn("commit", f"domain {self.domain} shut off during the cycle; overlay of {overlay.target} "
                                    f"committed offline into {overlay.base_path}")


class PausingHold(HoldStill):
    """The guest stands still while zfs takes its disks; unfreezing resumes it (when the cycle paused it)."""

    def intent(self) -> dict:
        return {"ram_file": self.memory_file, "paused_by_us": not self.plan.was_paused}

    def unfreeze_disks(self) -> None:
        if not self.rec.record.paused_by_us:
            return
        try:
            self.hv.resume(self.domain)
        except HypervisorError:
            if state_or_gone(self.hv, self.domain) == PAUSED:
                raise
            self.rec.warnings.append(f"{self.domain} stopped during the cycle: nothing to resume")
        self.rec.enter(CycleState.RESUMED, paused_by_us=False)

    def undo(self, now: str) -> None:
        if self.rec.record.paused_by_us and now == PAUSED:
            self.hv.resume(self.domain)


class ManualHold(PausingHold):
    """libvirt's snapshot=manual: the RAM is saved and the guest left paused for zfs."""

    def hold(self) -> None:
        self.hv.snapshot_manual(self.domain, list(self.plan.captured), self.memory_file, live=self.live,
                                skip_disks=list(self.plan.skipped))


class SuspendHold(PausingHold):
    """No RAM: a plain pause (nothing at all for a guest paused already)."""

    def hold(self) -> None:
        if not self.plan.was_paused:
            self.hv.suspend(self.domain)


STRATEGIES: dict[Hold, type[HoldStill]] = {Hold.OVERLAY: OverlayHold, Hold.MANUAL: ManualHold,
                                           Hold.SUSPEND: SuspendHold, Hold.ALREADY_PAUSED: SuspendHold}


def hold_for(hv: Hypervisor, rec: Recorder, plan: CyclePlan, domain: str, memory_file: str | None, *, live: bool,
             overlay_dir: Path, disk_formats: dict[str, str] | None = None) -> HoldStill:
    """The strategy the plan calls for, now that it is known whether the RAM can be written. `disk_formats`:
    target -> format of each captured disk (the overlays record it as their backing file's)."""
    strategy = STRATEGIES[plan.hold(memory_file is not None)]
    return strategy(hv, rec, plan, domain, memory_file, live=live, overlay_dir=overlay_dir,
                    disk_formats=disk_formats)
