"""One snapshot cycle of one target, as an explicit state machine with a crash journal.

    started → xml_saved → [quiescing → quiesced] → freezing → frozen → snapshotted
            → committed | resumed → unfrozen → [dump_kept] → done          ↘ failed (from any state)

(vmsnapd.journal.CycleState; docs/how-it-works.md, "States".) What the cycle does is decided up front by
vmsnapd.cycleplan.plan_cycle (pure); the hooks run around it (`_hooks`); the disks are held still by one of the
strategies of vmsnapd/holdstill.py; every journal write, log line and dry-run decision goes through one
vmsnapd.recorder.Recorder. Before each step the journal records where the cycle is (atomic write + fsync), so
`vmsnapd recover` can finish or undo whatever a crash interrupted. Whatever happens once the disks are held still,
the VM is brought back: overlays committed and pivoted, a guest we paused resumed, file systems thawed — also when a
journal write fails. A failed zfs snapshot never leaves the VM on an overlay.
"""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

from vmsnapd.report import TargetOutcome
from vmsnapd.backing import BACKING_PROPERTY, backing_property
from vmsnapd.cycleplan import (ACTIVE, GONE, CyclePlan, Verdict, fs_freeze_failed, kept_dump_failed, memory_verdict,
                               plan_cycle, quiesce_verdict, space_problem, subtree_root)
from vmsnapd.domxml import nvram_path
from vmsnapd.hvtypes import PAUSED, RUNNING, AgentUnavailable, HypervisorError, NoSpace, RamAlreadyCaptured
from vmsnapd.holdstill import COMMIT_ATTEMPTS, CycleFailed, HoldStill, StillOnOverlay, hold_for
from vmsnapd.commitback import state_or_gone
from vmsnapd.ports import HypervisorPort
from vmsnapd.hooks import HookEnv, HookResult, run_hook
from vmsnapd.files import (UnsafePath, copy_file_atomically, create_private_file, ensure_folder,
                           ensure_private_directory, write_file_atomically)
from vmsnapd.journal import CycleRecord, CycleState, Journal, JournalError
from vmsnapd.logsetup import NOTICE, dry_run_prefix, log_fields
from vmsnapd.names import STAMP_FORMAT, InvalidName, encode_name
from vmsnapd.overlaynames import memory_file_name
from vmsnapd.policy import snapshot_names
from vmsnapd.ramstore import DumpDisk, RamDumpInfo, RamStore, RamStoreError
from vmsnapd.recorder import Recorder
from vmsnapd.staging import Claim, StagingArea
from vmsnapd.targets import Target, dataset_of_path
from vmsnapd.zfs import SnapshotExists, Zfs, ZfsError, ZfsListing

log = logging.getLogger(__name__)

__all__ = ["COMMIT_ATTEMPTS", "Cycle", "CycleEnv", "CycleFailed", "StillOnOverlay"]

# Head-room asked of overlay_dir before a RAM dump: the guest's memory size times this.
RAM_SPACE_FACTOR = 1.1
XML_DIR = ".vmsnapd"
# Failures the cycle expects and reports in one line; anything else is logged with its traceback too.
EXPECTED = (CycleFailed, ZfsError, HypervisorError, InvalidName, RamStoreError, UnsafePath, JournalError)


@dataclass
class CycleEnv:
    """What a cycle needs from the host, injected by the caller."""

    zfs: Zfs
    hypervisor: HypervisorPort | None
    journal: Journal
    listing: ZfsListing
    overlay_dir: Path
    ram_store: RamStore | None
    ram_compression: str
    hook_timeout: float = 30.0
    dry_run: bool = False
    staging: StagingArea | None = None  # where fresh RAM files go first when it has room (vmsnapd.staging)


class Cycle:
    def __init__(self, env: CycleEnv, target: Target, periods: list[str], stamp: datetime):
        self.env = env
        self.target = target
        self.periods = periods
        self.stamp = stamp
        self.names = snapshot_names(stamp, periods)
        self.prefix = dry_run_prefix(env.dry_run)
        self.domain_xml: str | None = None  # the inactive definition, read once when the cycle saves it
        # A VM group's cycle (vmsnapd.groupcycle): `before_hold` waits until every member is ready to be held
        # (nothing paused yet), and `snapshot_step` replaces this cycle's own zfs snapshot step with the group's
        # one step for all members (it records what was taken and enters `snapshotted`, or raises).
        self.before_hold: Callable[[Recorder], None] | None = None
        self.snapshot_step: Callable[[Recorder], None] | None = None
        self.staged: Claim | None = None  # room in the staging folder held for this cycle's RAM file

    # -- entry -----------------------------------------------------------------------------------------------

    def run(self) -> TargetOutcome:
        with log_fields(dataset=self.target.datasets, domain=self.target.domain, snapshot=self.names,
                        cycle=f"{self.target.domain or self.target.name}-{self.stamp.strftime(STAMP_FORMAT)}"):
            return self._run()

    def _describe(self) -> str:
        return (f"dataset={','.join(self.target.datasets)} domain={self.target.domain or '-'} "
                f"snapshot={','.join(self.names)}")

    def _run(self) -> TargetOutcome:
        outcome = TargetOutcome(action="take", target=self.target.name, domain=self.target.domain,
                                datasets=list(self.target.datasets), dry_run=self.env.dry_run)
        try:
            plan = self._plan()
        except (CycleFailed, HypervisorError) as exc:
            # Nothing touched yet: no journal record, no hooks; this target fails alone.
            outcome.error = str(exc)
            log.error("%scycle failed %s: %s", self.prefix, self._describe(), exc)
            return outcome
        rec = self._recorder(plan)
        try:
            rec.begin()
        except (JournalError, OSError) as exc:
            outcome.error = f"cannot record the cycle in the journal, not starting it: {exc}"
            log.error("%scycle failed dataset=%s: %s", self.prefix, ",".join(self.target.datasets), outcome.error)
            return outcome
        try:
            with self._hooks(rec, outcome) as pre_hook:
                self._attempt(plan, rec, outcome, pre_hook)
        finally:
            self._release_staging()  # the RAM file is in the store or gone by now
        outcome.warnings = rec.warnings
        outcome.duration_ms = rec.elapsed_ms()
        outcome.pause_ms = rec.record.pause_ms
        if outcome.ok:
            pause = rec.record.pause_ms
            rec.log(NOTICE, "done", f"method={rec.record.method}" + (f" pause_ms={pause}" if pause is not None else ""))
        else:
            rec.log(logging.ERROR, "failed", outcome.error or "")
        return outcome

    def _plan(self) -> CyclePlan:
        if self.target.error:
            raise CycleFailed(self.target.error)
        return self._plan_for(self.env.hypervisor.state(self.target.domain) if self.target.domain else None)

    def _plan_for(self, vm_state: str | None) -> CyclePlan:
        return plan_cycle(domain=self.target.domain, vm_state=vm_state, policy=self.target.policy,
                          disks=[(d.target, d.source) for d in self.target.disks],
                          skipped=self.target.skipped_disks, overlay_dir=self.env.overlay_dir,
                          stamp=self.stamp.strftime(STAMP_FORMAT))

    def _recorder(self, plan: CyclePlan) -> Recorder:
        stamp_text = self.stamp.strftime(STAMP_FORMAT)
        record = CycleRecord(cycle_id=f"{self.target.domain or self.target.name}-{stamp_text}",
                             domain=self.target.domain, datasets=list(self.target.datasets),
                             snapshot_names=self.names, stamp=stamp_text, method=plan.method,
                             state=CycleState.STARTED)
        return Recorder(self.env.journal, record, dry_run=self.env.dry_run, describe=self._describe())

    def _attempt(self, plan: CyclePlan, rec: Recorder, outcome: TargetOutcome, pre_hook: HookResult | None) -> None:
        try:
            self._check_pre_hook(rec, pre_hook)
            plan = self._as_it_is_now(plan, rec)
            if plan.method == "plain":
                self._plain(rec)
            else:
                self._vm(plan, rec)
            rec.enter(CycleState.DONE)
            # What this cycle took: a name that existed already is someone else's snapshot (warned about).
            outcome.snapshots = [f"{ds}@{n}" for ds in self.target.datasets for n in self.names
                                 if f"{ds}@{n}" in rec.taken]
            if rec.record.ram_file is None:  # else a RAM file that could not be deleted: recover's to delete
                rec.finish()
        except Exception as exc:  # noqa: BLE001 — one target's failure must never stop the others
            self._failed(rec, outcome, exc)

    def _failed(self, rec: Recorder, outcome: TargetOutcome, exc: Exception) -> None:
        outcome.error = str(exc) or type(exc).__name__
        outcome.snapshots = list(rec.taken)  # a failure after the snapshot: it exists, say so
        if not isinstance(exc, EXPECTED):
            log.exception("unexpected error in cycle of %s", self.target.name)
        try:
            # A fresh RAM file no dump was made of cannot be vouched for: it goes (recover would delete it too).
            kept = rec.remains(rec.record.ram_file)
            rec.enter(CycleState.FAILED, error=outcome.error, ram_file=kept)
            if rec.vm_safe and kept is None:
                rec.finish()  # otherwise `recover` needs the record
        except Exception:  # the record stays for `recover`
            log.exception("could not record the failure of %s", self.target.name)

    # -- hooks -----------------------------------------------------------------------------------------------

    @contextmanager
    def _hooks(self, rec: Recorder, outcome: TargetOutcome) -> Iterator[HookResult | None]:
        """pre_snapshot before the cycle; post_snapshot after it, always when pre_snapshot ran (told whether it
        failed), else only after a successful cycle."""
        pre = self._hook(rec, "pre_snapshot")
        yield pre
        if pre is not None:
            post = self._hook(rec, "post_snapshot", pre_failed=not pre.ok)
        elif self.target.policy.hooks.post_snapshot and outcome.ok:
            post = self._hook(rec, "post_snapshot")
        else:
            post = None
        if post is not None and not post.ok:
            rec.warnings.append(f"post_snapshot hook failed: {post.error}")

    def _check_pre_hook(self, rec: Recorder, pre: HookResult | None) -> None:
        if pre is None or pre.ok:
            return
        if self.target.policy.pre_snapshot_failure == "fail":
            raise CycleFailed(f"pre_snapshot hook failed ({pre.error}); no snapshot taken "
                              f"(pre_snapshot_failure = \"fail\")")
        rec.warnings.append(f"pre_snapshot hook failed ({pre.error}); snapshot taken anyway")

    def _hook(self, rec: Recorder, phase: str, pre_failed: bool = False) -> HookResult | None:
        """Run the target's hook for `phase`, if it has one; None when there is none."""
        hooks = self.target.policy.hooks
        argv = getattr(hooks, phase)
        if not argv:
            return None
        try:
            env = HookEnv(phase=phase, datasets=list(self.target.datasets), snapshot_names=self.names,
                          domain=self.target.domain, ram_dump=rec.record.ram_dump, pre_failure=pre_failed)
            timeout = hooks.timeout if hooks.timeout is not None else self.env.hook_timeout
            return run_hook(argv, env, timeout, self.env.dry_run, log_context=self.target.name)
        except Exception as exc:  # run_hook reports a hook's own failure; anything else is ours
            log.exception("hook %s for %s could not be run", phase, self.target.name)
            return HookResult(ok=False, returncode=None, error=f"could not be run: {exc}")

    # -- plain: no running VM -----------------------------------------------------------------------------

    def _plain(self, rec: Recorder) -> None:
        if self.target.domain:
            self._save_domain_xml(rec)
        self._ready_to_hold(rec)
        self._snapshot_datasets(rec, atomic_needed=True)
        self._record_backing(rec)

    def _ready_to_hold(self, rec: Recorder) -> None:
        if self.before_hold is not None:
            self.before_hold(rec)

    # -- running or paused VM -------------------------------------------------------------------------

    def _as_it_is_now(self, plan: CyclePlan, rec: Recorder) -> CyclePlan:
        """After the pre_snapshot hook, which may have changed the VM (so may an admin), verify it before acting:
        the plan for the VM as it is now. A VM that stopped is snapshotted as a stopped VM, its disks at rest (a
        cold-backup hook shuts it down before the snapshot and starts it after); one undefined meanwhile fails the
        cycle before anything is touched; one paused or resumed meanwhile is held as what it is now (never resumed
        by us when someone else paused it, never left paused when someone else resumed it); disks that moved fail
        the cycle (see _same_disks)."""
        domain = self.target.domain
        if domain is None:
            return plan
        now = state_or_gone(self.env.hypervisor, domain)
        planned = _kind(plan)
        if planned in ACTIVE and now == GONE:
            raise CycleFailed(f"domain {domain} is no longer running (was {planned}, now {now}): it was undefined "
                              "after the cycle began; no snapshot taken")
        if now == GONE:
            return plan  # a plain cycle: saving the domain XML says it is gone
        self._same_disks()
        replanned = self._plan_for(now)
        if _kind(replanned) == planned:
            return plan
        rec.note(method=replanned.method)
        rec.log(NOTICE, "plan", f"{domain} was {planned} when the cycle began and is {now} after the pre_snapshot "
                                f"hook: taken as it is now, method={replanned.method}")
        return replanned

    def _same_disks(self) -> None:
        """The disks the target was planned with are the VM's disks still. A pre_snapshot hook that moved the VM
        onto an overlay of its own (`virsh snapshot-create-as --disk-only`) left the dataset's file still since
        then: a snapshot of it with the RAM of now would be a restore point whose RAM is newer than its disk (the
        guest's file systems corrupted on restore)."""
        now = {d.target: d.source for d in self.env.hypervisor.disks(self.target.domain)}
        moved = [f"{d.target} {d.source} -> {now.get(d.target, '(gone)')}" for d in self.target.disks
                 if now.get(d.target) != d.source]
        if moved:
            raise CycleFailed(f"the disks of {self.target.domain} changed after the cycle began ({'; '.join(moved)}; "
                              "the pre_snapshot hook?): no snapshot taken — the datasets no longer hold what the "
                              "guest writes now")

    def _vm(self, plan: CyclePlan, rec: Recorder) -> None:
        self._save_domain_xml(rec)
        hold = self._hold_for(plan, rec, self._memory_file(rec) if plan.memory else None)
        self._ready_to_hold(rec)
        with self.env.hypervisor.watch_pauses(self.target.domain) as pauses:
            snapshot_error, unfreeze_error = self._hold_and_snapshot(plan, rec, hold)
        rec.enter(CycleState.UNFROZEN if unfreeze_error is None else rec.state, pause_ms=pauses.paused_ms())
        if snapshot_error is not None:
            self._drop_ram_file(rec)
            if unfreeze_error is not None:
                raise CycleFailed(f"{snapshot_error}; and then: {self._unfreeze_message(rec, unfreeze_error)}")
            raise snapshot_error
        self._record_backing(rec)
        if rec.record.ram_file:
            # The RAM matches the snapshot even when the commit afterwards failed: keep it.
            self._keep_dump_or_say_why(rec, plan)
        if unfreeze_error is not None:
            raise CycleFailed(self._unfreeze_message(rec, unfreeze_error)) from unfreeze_error

    def _hold_and_snapshot(self, plan: CyclePlan, rec: Recorder,
                           hold: HoldStill) -> tuple[Exception | None, Exception | None]:
        """Quiesce, hold the disks still, snapshot, unfreeze: (the snapshot's error, the unfreeze's). The file
        systems are thawed as soon as the guest runs again: at once on its overlays; after the resume when it was
        paused (libvirt refuses agent commands to a paused guest)."""
        snapshot_error = unfreeze_error = None
        with self._quiesced(plan, rec) as thaw:
            hold = self._freeze(plan, rec, hold)
            if hold.guest_runs:
                thaw()
            try:
                self._snapshot_datasets(rec, atomic_needed=False)
            except Exception as exc:  # noqa: BLE001 — unfreeze first, then report
                snapshot_error = exc
            try:
                hold.unfreeze_disks()
            except Exception as exc:  # noqa: BLE001 — keep what the snapshot gave us, then report
                unfreeze_error = exc
        return snapshot_error, unfreeze_error

    def _hold_for(self, plan: CyclePlan, rec: Recorder, memory_file: str | None) -> HoldStill:
        return hold_for(self.env.hypervisor, rec, plan, self.target.domain, memory_file,
                        live=plan.live, overlay_dir=self.env.overlay_dir,
                        disk_formats={d.target: d.driver_type for d in self.target.disks})

    def _freeze(self, plan: CyclePlan, rec: Recorder, hold: HoldStill) -> HoldStill:
        """Hold the disks still (the hold used is returned). libvirt undoes a RAM capture that fails (the guest is
        as it was, nothing half-made is left), so two failures get another hold: the RAM file's folder filled up
        during the capture → the staging folder's RAM file goes to overlay_dir, overlay_dir's is left out
        (`_after_full`); QEMU refuses a second capture of a guest paused since the last one → disk-only. Disk-only
        is `on_memory_failure`'s to allow. At most three holds: each retry has a RAM file fewer."""
        while True:
            try:
                hold.freeze_disks()
                return hold
            except NoSpace as exc:
                if hold.memory_file is None:
                    raise  # not the RAM file's room: nothing to leave out
                hold = self._hold_for(plan, rec, self._after_full(rec, exc))
            except RamAlreadyCaptured as exc:
                if hold.memory_file is None:
                    raise
                # A guest paused since its RAM was last captured (by an earlier cycle, most likely): its RAM has not
                # changed since, and that capture's dump still holds it; this snapshot is disk-only, or it fails.
                self._memory_goes_on(rec, f"{self.target.domain} has stayed paused since its RAM was last captured "
                                          f"and QEMU takes no other capture until it runs again ({exc}); the RAM "
                                          "dump of that capture still holds its memory")
                hold = self._hold_for(plan, rec, None)

    def _after_full(self, rec: Recorder, exc: NoSpace) -> str | None:
        """The RAM file's folder filled up during the capture: where the next hold writes the RAM — overlay_dir
        after the staging folder; after overlay_dir nowhere (disk-only with a warning, or CycleFailed under
        on_memory_failure = "fail", as for a folder found too small before the guest was touched)."""
        if self.staged is not None:
            rec.warn("memory", f"ram_staging_dir {self.staged.folder} filled up during the RAM capture ({exc}); "
                               "again with the RAM file in overlay_dir")
            self._release_staging()
            memory = self.env.hypervisor.memory_bytes(self.target.domain)
            return self._memory_file_in(rec, self.env.overlay_dir, memory)
        self._memory_goes_on(rec, f"overlay_dir {self.env.overlay_dir} filled up during the RAM capture ({exc})")
        return None

    def _unfreeze_message(self, rec: Recorder, exc: Exception) -> str:
        if not isinstance(exc, StillOnOverlay):
            return f"could not bring {self.target.domain} back: {exc}"
        disks = ", ".join(f"{t} still runs on overlay {p}" for t, p in exc.disks)
        taken = f"snapshot {', '.join(rec.taken)} taken" if rec.taken else "no snapshot taken"
        dump = f", RAM dump kept at {rec.record.ram_dump}" if rec.record.ram_dump else ""
        return (f"CRITICAL: {self.target.domain}: {disks} after {COMMIT_ATTEMPTS} commit attempts ({exc.last}); "
                f"the VM keeps running on it (safe, but the overlay grows); {taken}{dump}; "
                f"the cycle stays in the journal: run `vmsnapd recover` once the cause is fixed")

    def _memory_file(self, rec: Recorder) -> str | None:
        """Where libvirt writes the RAM, or None (with a warning) when it cannot be written."""
        memory = self.env.hypervisor.memory_bytes(self.target.domain)
        return self._memory_file_in(rec, self._ram_file_folder(rec, memory), memory)

    def _memory_file_in(self, rec: Recorder, folder: Path, memory: int) -> str | None:
        """The RAM file's path in `folder`, or None (with a warning) when it cannot be written there."""
        if not self._memory_goes_on(rec, self._memory_problem(folder, memory)):
            return None
        return str(folder / memory_file_name(self.target.domain, rec.record.stamp))

    def _memory_goes_on(self, rec: Recorder, problem: str | None) -> bool:
        """Whether the RAM is captured despite `problem` (None: none); else a disk-only snapshot with a warning,
        or, with `on_memory_failure = "fail"`, CycleFailed. The staging room is given back when it is not used."""
        verdict = memory_verdict(problem, self.target.policy.on_memory_failure)
        if not verdict.go:
            self._release_staging()
        if verdict.fail:
            raise CycleFailed(verdict.fail)
        self._say(rec, "memory", verdict)
        return verdict.go

    def _ram_file_folder(self, rec: Recorder, memory: int) -> Path:
        """The staging folder when it has room for this guest's RAM file (vmsnapd.staging), else overlay_dir."""
        staging = self.env.staging
        if staging is None:
            return self.env.overlay_dir
        claim = staging.claim(memory)
        if isinstance(claim, Claim):
            self.staged = claim
            rec.log(logging.INFO, "memory", f"RAM file staged in {claim.folder}")
            return claim.folder
        rec.log(logging.WARNING if claim.loud else logging.INFO, "memory",
                f"RAM file in overlay_dir, not in ram_staging_dir {staging.folder}: {claim.reason}")
        return self.env.overlay_dir

    def _release_staging(self) -> None:
        if self.staged is not None and self.env.staging is not None:
            self.env.staging.release(self.staged)
            self.staged = None

    def _memory_problem(self, folder: Path, memory: int) -> str | None:
        """Why the RAM cannot be written to `folder` and kept in the RAM store, or None."""
        domain = self.target.domain
        try:
            if not self.env.dry_run:  # a dry run creates no directory and writes no probe
                # 0711: QEMU (libvirt-qemu) must reach the overlays in it, but not list them.
                ensure_folder(self.env.overlay_dir, 0o711, set_mode=False)
                _check_writable(self.env.ram_store.folder_for(domain))
            free = {str(where): shutil.disk_usage(_existing(where)).free
                    for where in (folder, self.env.ram_store.ram_dir)}
        except OSError as exc:
            return f"cannot write RAM dump: {exc}"
        compressor = self.env.ram_store.compression_problem(self.env.ram_compression)
        if compressor is not None:
            return f"cannot store a RAM dump: {compressor}"
        return space_problem(free, memory, RAM_SPACE_FACTOR)

    @contextmanager
    def _quiesced(self, plan: CyclePlan, rec: Recorder) -> Iterator[Callable[[], None]]:
        """The guest's file systems frozen through its agent (when the plan and the agent allow) for the body,
        which may thaw them early with the function it is given; thawed at its end at the latest, whatever
        happens."""
        frozen = [self._quiesce(plan, rec)]

        def thaw() -> None:
            if frozen[0]:
                frozen[0] = False
                self._thaw(rec)

        try:
            yield thaw
        finally:
            thaw()

    def _quiesce(self, plan: CyclePlan, rec: Recorder) -> bool:
        domain = self.target.domain
        hv = self.env.hypervisor
        if plan.quiesce == "off":
            return False
        channel = hv.has_agent_channel(domain)
        verdict = quiesce_verdict(domain, plan.quiesce, channel,
                                  hv.agent_answers(domain) if channel or plan.quiesce == "required" else None)
        if not verdict.go:
            return self._not_quiesced(rec, verdict)
        rec.enter(CycleState.QUIESCING, fs_frozen=True)
        try:
            count = hv.fs_freeze(domain)
        except AgentUnavailable as exc:
            rec.note(fs_frozen=False)
            return self._not_quiesced(rec, fs_freeze_failed(domain, plan.quiesce, str(exc)), exc)
        try:
            rec.enter(CycleState.QUIESCED, quiesced=True)
        except Exception:
            self._thaw(rec)  # never leave the guest frozen because the journal cannot say it is
            raise
        rec.log(logging.INFO, "quiesced", f"{count} file system(s) frozen")
        return True

    def _not_quiesced(self, rec: Recorder, verdict: Verdict, cause: Exception | None = None) -> bool:
        self._say(rec, "quiesce", verdict, cause)
        return False

    @staticmethod
    def _say(rec: Recorder, event: str, verdict: Verdict, cause: Exception | None = None) -> None:
        """Carry out a verdict's words: fail the cycle, or record its warning and log its lines."""
        if verdict.fail:
            raise CycleFailed(verdict.fail) from cause
        if verdict.info:
            rec.log(logging.INFO, event, verdict.info)
        if verdict.warning:
            rec.warnings.append(verdict.warning)
        if verdict.logged:
            rec.log(logging.WARNING, event, verdict.logged)

    def _thaw(self, rec: Recorder) -> None:
        try:
            count = self.env.hypervisor.fs_thaw(self.target.domain)
        except HypervisorError as exc:
            rec.warnings.append(f"fsthaw failed: {exc}")
            rec.log(logging.ERROR, "thaw", str(exc))
            return
        rec.note(fs_frozen=False)
        rec.log(logging.INFO, "thawed", f"{count} file system(s) thawed")

    # -- steps shared by both kinds -------------------------------------------------------------------------

    def _save_domain_xml(self, rec: Recorder) -> None:
        """Copy the domain XML (and NVRAM kept outside the dataset) into the VM's first dataset,
        so a snapshot carries what is needed to bring the VM back even if libvirt's copy is lost."""
        info = self.env.listing.datasets.get(self.target.datasets[0])
        if info is None or not info.mountpoint:
            rec.warnings.append(f"{self.target.datasets[0]} is not mounted: domain XML not saved in it")
            return
        if self.env.dry_run:
            log.info("dry-run: would save the domain XML of %s into %s", self.target.domain, info.mountpoint)
            return
        folder = Path(info.mountpoint) / XML_DIR
        xml = self.domain_xml = self.env.hypervisor.xml(self.target.domain, inactive=True)  # with secrets
        name = encode_name(self.target.domain)
        try:
            ensure_private_directory(folder)
            write_file_atomically(folder / f"{name}.xml", xml.encode())
            nvram = nvram_path(xml)
            if nvram and os.path.exists(nvram) and not nvram.startswith(info.mountpoint.rstrip("/") + "/"):
                copy_file_atomically(Path(nvram), folder / f"{name}.nvram")
        except UnsafePath as exc:
            # The snapshot is still worth taking; the admin is told every cycle until the folder is fixed.
            rec.warn("xml", f"domain XML not saved: {exc}")
            return
        rec.enter(CycleState.XML_SAVED)

    def _snapshot_datasets(self, rec: Recorder, *, atomic_needed: bool) -> None:
        if self.snapshot_step is not None:
            self.snapshot_step(rec)
            return
        datasets = self.target.datasets
        subtree = subtree_root(datasets, self.env.listing.datasets)
        for name in self.names:
            try:
                if subtree:
                    # One command for the whole subtree: atomic on zfs-fuse too (which takes one name per command).
                    self.env.zfs.snapshot_recursive(subtree, name)
                    atomic = True
                else:
                    atomic = self.env.zfs.snapshot(datasets, name)
            except SnapshotExists:
                rec.warnings.append(f"{name} already exists on {','.join(datasets)}")
                continue
            rec.taken += [f"{ds}@{name}" for ds in datasets]
            if atomic_needed and not atomic:
                rec.warn("snapshot", f"snapshots of {','.join(datasets)} were taken one by one, not atomically "
                                     "(zfs-fuse takes one name per command, OpenZFS the datasets of one pool per "
                                     "command); they may differ by a few milliseconds")
        rec.enter(CycleState.SNAPSHOTTED)

    @staticmethod
    def _drop_ram_file(rec: Recorder) -> None:
        """The fresh RAM file no dump is made of goes; one that cannot be deleted (a warning) stays in the record,
        which `recover` then deletes."""
        if rec.record.ram_file:
            rec.note(ram_file=rec.remains(rec.record.ram_file))

    def _record_backing(self, rec: Recorder) -> None:
        """The outside backing files as they are, on every snapshot just taken (vmsnapd.backing): what a restore
        of a snapshot without a RAM dump checks them against. Not recorded: a warning, the snapshot stays."""
        if not self.target.backing or not rec.taken:
            return
        value = backing_property(self.target.backing)
        if value is None:
            rec.warn("backing", f"the backing files of {self.target.domain} are too many to record on its "
                                "snapshots: a restore can check only that they are there")
            return
        if self.env.dry_run:
            log.info("dry-run: would record %s on %s", BACKING_PROPERTY, ", ".join(rec.taken))
            return
        for snapshot in rec.taken:
            try:
                self.env.zfs.set_property(snapshot, BACKING_PROPERTY, value)
            except ZfsError as exc:
                rec.warn("backing", f"{BACKING_PROPERTY} not recorded on {snapshot} (a restore of it can check only "
                                    f"that the backing files are there): {exc}")

    def _keep_dump_or_say_why(self, rec: Recorder, plan: CyclePlan) -> None:
        if not self._names_taken(rec):
            # Every name existed already, taken at another instant: no snapshot holds this RAM's disks.
            self._drop_ram_file(rec)
            rec.warn("memory", "no snapshot was taken at this cycle's instant (its names existed already): "
                               "RAM dump discarded")
            return
        try:
            self._keep_dump(rec, plan)
        except (RamStoreError, OSError) as exc:
            self._drop_ram_file(rec)
            problem = f"RAM dump could not be stored in {self.env.ram_store.ram_dir}: {exc}"
            self._say(rec, "memory", kept_dump_failed(problem, self.target.policy.on_memory_failure), exc)

    def _names_taken(self, rec: Recorder) -> list[str]:
        return [n for n in self.names if f"{self.target.datasets[0]}@{n}" in rec.taken]

    def _keep_dump(self, rec: Recorder, plan: CyclePlan) -> None:
        domain = self.target.domain
        info = RamDumpInfo(
            domain=domain,
            stamp=rec.record.stamp,
            datasets=list(self.target.datasets),
            snapshot_names=self._names_taken(rec),  # never one taken at another instant
            # The definition read at the start (the domain may have vanished since; the dump still matches).
            domain_xml=self.domain_xml or self.env.hypervisor.xml(domain, inactive=True),
            disks=[DumpDisk(target=d.target, source=d.source,
                            dataset=dataset_of_path(d.source, self.env.listing) or self.target.datasets[0])
                   for d in self.target.disks],
            backing=self.target.backing,  # what a restore checks is still there and unchanged (vmsnapd.backing)
            method=rec.record.method,
            live=plan.live,
            quiesced=rec.record.quiesced,
            pause_ms=rec.record.pause_ms,
        )
        if self.env.dry_run:
            log.info("dry-run: would keep the RAM dump of %s in %s", domain, self.env.ram_store.ram_dir)
            return
        dump = self.env.ram_store.keep(Path(rec.record.ram_file), info, self.env.ram_compression)
        rec.enter(CycleState.DUMP_KEPT, ram_file=None, ram_dump=str(dump.path))
        rec.log(logging.INFO, "dump_kept", f"{dump.path} ({dump.size >> 20} MiB)")


def _kind(plan: CyclePlan) -> str:
    """What the plan took the VM for: "plain" (not running), PAUSED or RUNNING."""
    if plan.method == "plain":
        return "plain"
    return PAUSED if plan.was_paused else RUNNING


def _existing(path: Path) -> Path:
    """`path`, or its nearest existing ancestor (whose file system it will be on)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable(folder: Path) -> None:
    """Raise OSError (UnsafePath for a folder someone else controls) unless a file can be created in
    `folder` (made 0700 if missing)."""
    ensure_private_directory(folder)
    probe = folder / f".probe-{os.getpid()}"
    try:
        os.unlink(probe)  # a leftover of a crash
    except FileNotFoundError:
        pass
    fd = create_private_file(probe)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)
    probe.unlink()
