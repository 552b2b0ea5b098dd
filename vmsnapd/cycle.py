"""One snapshot cycle of one target, as an explicit state machine with a crash journal.

    started → hooks_pre → xml_saved → [quiesced] → frozen → snapshotted → committed/resumed → dump_kept → done
                                                                       ↘ failed (from any state)

Before each step the journal records where the cycle is (atomic write + fsync), so `vmsnapd recover`
can finish or undo whatever a crash interrupted. Whatever happens between `frozen` and the end, the
`finally` blocks bring the VM back: overlays committed and pivoted, a guest we paused resumed, file
systems thawed. A failed zfs snapshot never leaves the VM on an overlay.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from vmsnapd.actions.report import TargetOutcome
from vmsnapd.hypervisor import (PAUSED, RUNNING, AgentUnavailable, DomainNotFound,
                                Hypervisor, HypervisorError, nvram_path)
from vmsnapd.hooks import HookEnv, HookResult, run_hook
from vmsnapd.files import (UnsafePath, copy_file_atomically, create_private_file, ensure_folder,
                           ensure_private_directory, write_file_atomically)
from vmsnapd.journal import CycleRecord, Journal, JournalError, OverlayRecord
from vmsnapd.logsetup import NOTICE, fields, log_fields
from vmsnapd.names import STAMP_FORMAT, InvalidName, encode_name
from vmsnapd.overlaynames import memory_file_name, overlay_file_name
from vmsnapd.policy import snapshot_names
from vmsnapd.ramstore import DumpDisk, RamDumpInfo, RamStore, RamStoreError
from vmsnapd.targets import Target, dataset_of_path
from vmsnapd.zfs import SnapshotExists, Zfs, ZfsError, ZfsListing

log = logging.getLogger(__name__)

COMMIT_ATTEMPTS = 3
COMMIT_RETRY_DELAY_S = 1.0
# Head-room asked of overlay_dir before a RAM dump: the guest's memory size times this.
RAM_SPACE_FACTOR = 1.1
XML_DIR = ".vmsnapd"


class CycleFailed(Exception):
    pass


class StillOnOverlay(HypervisorError):
    """Every commit attempt failed: the VM runs on (some of) its overlays, which is safe; `recover` finishes."""

    def __init__(self, disks: list[tuple[str, str]], last: Exception):
        self.disks = disks  # (target, overlay path)
        self.last = last
        super().__init__(str(last))


@dataclass
class CycleEnv:
    """What a cycle needs from the host, injected by the caller."""

    zfs: Zfs
    hypervisor: Hypervisor | None
    journal: Journal
    listing: ZfsListing
    overlay_dir: Path
    ram_store: RamStore | None
    ram_compression: str
    hook_timeout: float = 30.0
    dry_run: bool = False


@dataclass
class CycleState:
    record: CycleRecord
    names: list[str]
    started: float = field(default_factory=time.monotonic)
    warnings: list[str] = field(default_factory=list)
    taken: list[str] = field(default_factory=list)  # full snapshot names made by this cycle

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)


class Cycle:
    def __init__(self, env: CycleEnv, target: Target, periods: list[str], stamp: datetime):
        self.env = env
        self.target = target
        self.periods = periods
        self.stamp = stamp
        self.names = snapshot_names(stamp, periods)
        self.prefix = "dry-run: " if env.dry_run else ""

    # -- logging -------------------------------------------------------------------------------------------

    def _log(self, level: int, state: CycleState, event: str, extra: str = "") -> None:
        log.log(level, "%scycle %s dataset=%s domain=%s snapshot=%s elapsed_ms=%d%s", self.prefix, event,
                ",".join(self.target.datasets), self.target.domain or "-", ",".join(self.names),
                state.elapsed_ms(), f": {extra}" if extra else "", extra=fields(pause_ms=state.record.pause_ms))

    def _enter(self, state: CycleState, name: str, **changes: object) -> None:
        if not self.env.dry_run:
            state.record = self.env.journal.update(state.record, state=name, **changes)
        else:
            state.record = state.record.model_copy(update={"state": name, **changes})
        self._log(logging.DEBUG, state, f"→ {name}")

    # -- entry -----------------------------------------------------------------------------------------------

    def run(self) -> TargetOutcome:
        with log_fields(dataset=self.target.datasets, domain=self.target.domain, snapshot=self.names,
                        cycle=f"{self.target.domain or self.target.name}-{self.stamp.strftime(STAMP_FORMAT)}"):
            return self._run()

    def _run(self) -> TargetOutcome:
        outcome = TargetOutcome(action="take", target=self.target.name, domain=self.target.domain,
                                datasets=list(self.target.datasets), dry_run=self.env.dry_run)
        stamp_text = self.stamp.strftime(STAMP_FORMAT)
        method = "plain"
        vm_state = None
        try:
            if self.target.error:
                raise CycleFailed(self.target.error)
            if self.target.domain:
                vm_state = self.env.hypervisor.state(self.target.domain)
                if vm_state in (RUNNING, PAUSED):
                    method = self.target.policy.method if vm_state == RUNNING else "pause"
        except (CycleFailed, HypervisorError) as exc:
            # Nothing touched yet: no journal record, no hooks; this target fails alone.
            outcome.error = str(exc)
            log.error("%scycle failed dataset=%s domain=%s snapshot=%s: %s", self.prefix,
                      ",".join(self.target.datasets), self.target.domain or "-", ",".join(self.names), exc)
            return outcome
        record = CycleRecord(cycle_id=f"{self.target.domain or self.target.name}-{stamp_text}",
                             domain=self.target.domain, datasets=list(self.target.datasets),
                             snapshot_names=self.names, stamp=stamp_text, method=method, state="started")
        state = CycleState(record=record, names=self.names)
        if not self.env.dry_run:
            try:
                state.record = self.env.journal.begin(record)
            except (JournalError, OSError) as exc:
                outcome.error = f"cannot record the cycle in the journal, not starting it: {exc}"
                log.error("%scycle failed dataset=%s: %s", self.prefix, ",".join(self.target.datasets), outcome.error)
                return outcome
        pre_hook: HookResult | None = None
        try:
            pre_hook = self._hook(state, "pre_snapshot")
            if pre_hook is not None and not pre_hook.ok:
                if self.target.policy.pre_snapshot_failure == "fail":
                    raise CycleFailed(f"pre_snapshot hook failed ({pre_hook.error}); no snapshot taken "
                                      f"(pre_snapshot_failure = \"fail\")")
                state.warnings.append(f"pre_snapshot hook failed ({pre_hook.error}); snapshot taken anyway")
            if method != "plain":
                self._still_there(vm_state)
            if method == "plain":
                self._plain(state, vm_state)
            else:
                self._vm(state, vm_state)
            self._enter(state, "done")
            outcome.snapshots = [f"{ds}@{n}" for ds in self.target.datasets for n in self.names]
            if not self.env.dry_run:
                self.env.journal.finish(state.record)
        except Exception as exc:  # noqa: BLE001 — one target's failure must never stop the others
            outcome.error = str(exc) or type(exc).__name__
            outcome.snapshots = list(state.taken)  # a failure after the snapshot: it exists, say so
            if not isinstance(exc, (CycleFailed, ZfsError, HypervisorError, InvalidName, RamStoreError, UnsafePath)):
                log.exception("unexpected error in cycle of %s", self.target.name)
            try:
                self._enter(state, "failed", error=outcome.error)
                vm_safe = not (state.record.overlays or state.record.paused_by_us or state.record.fs_frozen)
                if not self.env.dry_run and vm_safe:
                    self.env.journal.finish(state.record)  # otherwise `recover` needs the record
            except Exception:  # noqa: BLE001 — the record stays for `recover`
                log.exception("could not record the failure of %s", self.target.name)
        if pre_hook is not None:  # post_snapshot always runs when pre_snapshot ran
            post = self._hook(state, "post_snapshot", pre_failed=not pre_hook.ok)
            if post is not None and not post.ok:
                state.warnings.append(f"post_snapshot hook failed: {post.error}")
        elif self.target.policy.hooks.post_snapshot and outcome.ok:
            post = self._hook(state, "post_snapshot")
            if post is not None and not post.ok:
                state.warnings.append(f"post_snapshot hook failed: {post.error}")
        outcome.warnings = state.warnings
        outcome.duration_ms = state.elapsed_ms()
        outcome.pause_ms = state.record.pause_ms
        if outcome.ok:
            pause = state.record.pause_ms
            self._log(NOTICE, state, "done", f"method={method}"
                      + (f" pause_ms={pause}" if pause is not None else ""))
        else:
            self._log(logging.ERROR, state, "failed", outcome.error or "")
        return outcome

    # -- plain: no running VM -----------------------------------------------------------------------------

    def _plain(self, state: CycleState, vm_state: str | None) -> None:
        if self.target.domain:
            self._save_domain_xml(state)
        self._snapshot_datasets(state, atomic_needed=True)

    # -- running or paused VM -------------------------------------------------------------------------

    def _vm(self, state: CycleState, vm_state: str) -> None:
        domain = self.target.domain
        hv = self.env.hypervisor
        policy = self.target.policy
        self._save_domain_xml(state)
        memory_file = self._memory_file(state) if policy.memory else None
        frozen_fs = False
        snapshot_error: Exception | None = None
        unfreeze_error: Exception | None = None
        try:
            if vm_state == RUNNING and policy.quiesce != "off":
                frozen_fs = self._quiesce(state)
            with hv.watch_pauses(domain) as pauses:
                try:
                    self._freeze(state, memory_file, vm_state)
                finally:
                    if frozen_fs:
                        self._thaw(state)
                        frozen_fs = False
                try:
                    self._snapshot_datasets(state, atomic_needed=False)
                except Exception as exc:  # noqa: BLE001 — unfreeze first, then report
                    snapshot_error = exc
                try:
                    self._unfreeze(state, vm_state)
                except Exception as exc:  # noqa: BLE001 — keep what the snapshot gave us, then report
                    unfreeze_error = exc
            pause_ms = pauses.paused_ms()
            self._enter(state, "unfrozen" if unfreeze_error is None else state.record.state, pause_ms=pause_ms)
        finally:
            if frozen_fs:
                self._thaw(state)
        if snapshot_error is not None:
            if state.record.ram_file:
                self._discard(Path(state.record.ram_file))
                self._enter(state, state.record.state, ram_file=None)
            if unfreeze_error is not None:
                raise CycleFailed(f"{snapshot_error}; and then: {self._unfreeze_message(state, unfreeze_error)}")
            raise snapshot_error
        if state.record.ram_file:
            # The RAM matches the snapshot even when the commit afterwards failed: keep it.
            try:
                self._keep_dump(state)
            except (RamStoreError, OSError) as exc:
                self._discard(Path(state.record.ram_file))
                self._enter(state, state.record.state, ram_file=None)
                problem = f"RAM dump could not be stored in {self.env.ram_store.ram_dir}: {exc}"
                if self.target.policy.on_memory_failure == "fail":
                    # The snapshot is taken and stays (a valid disk-only restore point); the cycle reports failure.
                    raise CycleFailed(
                        f"{problem} (on_memory_failure = \"fail\"); the snapshot stays, disk only") from exc
                state.warnings.append(f"{problem}; the snapshot is disk-only")
                self._log(logging.WARNING, state, "memory", f"{problem}; disk-only (on_memory_failure)")
        if unfreeze_error is not None:
            raise CycleFailed(self._unfreeze_message(state, unfreeze_error)) from unfreeze_error

    def _unfreeze_message(self, state: CycleState, exc: Exception) -> str:
        if not isinstance(exc, StillOnOverlay):
            return f"could not bring {self.target.domain} back: {exc}"
        disks = ", ".join(f"{t} still runs on overlay {p}" for t, p in exc.disks)
        taken = f"snapshot {', '.join(state.taken)} taken" if state.taken else "no snapshot taken"
        dump = f", RAM dump kept at {state.record.ram_dump}" if state.record.ram_dump else ""
        return (f"CRITICAL: {self.target.domain}: {disks} after {COMMIT_ATTEMPTS} commit attempts ({exc.last}); "
                f"the VM keeps running on it (safe, but the overlay grows); {taken}{dump}; "
                f"the cycle stays in the journal: run `vmsnapd recover` once the cause is fixed")

    def _still_there(self, vm_state: str) -> None:
        """After the pre_snapshot hook: a VM that stopped meanwhile fails the cycle before anything is touched."""
        try:
            now = self.env.hypervisor.state(self.target.domain)
        except DomainNotFound:
            now = "gone"
        if now not in (RUNNING, PAUSED):
            raise CycleFailed(f"domain {self.target.domain} is no longer running (was {vm_state}, now {now}): "
                              "it stopped after the cycle began; no snapshot taken, the next pass takes a plain one")

    def _memory_file(self, state: CycleState) -> str | None:
        """Where libvirt writes the RAM, or None (with a warning) when it cannot be written."""
        domain = self.target.domain
        path = self.env.overlay_dir / memory_file_name(domain, state.record.stamp)
        problem = None
        try:
            if not self.env.dry_run:  # a dry run creates no directory and writes no probe
                # 0711: QEMU (libvirt-qemu) must reach the overlays in it, but not list them.
                ensure_folder(self.env.overlay_dir, 0o711, set_mode=False)
                _check_writable(self.env.ram_store.folder_for(domain))
            memory = self.env.hypervisor.memory_bytes(domain)
            for where in (self.env.overlay_dir, self.env.ram_store.ram_dir):
                free = shutil.disk_usage(_existing(where)).free
                if free < memory * RAM_SPACE_FACTOR:
                    problem = f"{where} has {free >> 20} MiB free, the RAM dump needs about {memory >> 20} MiB"
        except OSError as exc:
            problem = f"cannot write RAM dump: {exc}"
        if problem is None:
            return str(path)
        if self.target.policy.on_memory_failure == "fail":
            raise CycleFailed(f"{problem} (on_memory_failure = \"fail\")")
        state.warnings.append(f"{problem}; taking a disk-only snapshot")
        self._log(logging.WARNING, state, "memory", f"{problem}; disk-only snapshot (on_memory_failure)")
        return None

    def _quiesce(self, state: CycleState) -> bool:
        domain = self.target.domain
        hv = self.env.hypervisor
        required = self.target.policy.quiesce == "required"
        if not required and not hv.has_agent_channel(domain):
            # No agent channel configured: nothing to warn about every cycle; the RAM dump (or the
            # crash-consistent disks) is what this VM gets, as its admin set it up.
            self._log(logging.INFO, state, "quiesce", "no guest agent channel; not quiesced")
            return False
        if not hv.agent_answers(domain):
            if required:
                raise CycleFailed(f"guest agent of {domain} does not answer and quiesce = \"required\"")
            state.warnings.append("guest agent does not answer: snapshot not quiesced")
            self._log(logging.WARNING, state, "quiesce", "guest agent does not answer; not quiesced")
            return False
        self._enter(state, "quiescing", fs_frozen=True)
        try:
            count = hv.fs_freeze(domain)
        except AgentUnavailable as exc:
            self._enter(state, "quiescing", fs_frozen=False)
            if required:
                raise CycleFailed(f"fsfreeze of {domain} failed: {exc}") from exc
            state.warnings.append(f"fsfreeze failed ({exc}): snapshot not quiesced")
            return False
        self._enter(state, "quiesced", quiesced=True)
        self._log(logging.INFO, state, "quiesced", f"{count} file system(s) frozen")
        return True

    def _thaw(self, state: CycleState) -> None:
        try:
            count = self.env.hypervisor.fs_thaw(self.target.domain)
        except HypervisorError as exc:
            state.warnings.append(f"fsthaw failed: {exc}")
            self._log(logging.ERROR, state, "thaw", str(exc))
            return
        self._enter(state, state.record.state, fs_frozen=False)
        self._log(logging.INFO, state, "thawed", f"{count} file system(s) thawed")

    def _freeze(self, state: CycleState, memory_file: str | None, vm_state: str) -> None:
        domain = self.target.domain
        hv = self.env.hypervisor
        policy = self.target.policy
        targets = [d.target for d in self.target.disks]
        skipped = self.target.skipped_disks
        if state.record.method == "overlay":
            overlays = [OverlayRecord(target=d.target, base_path=d.source,
                                      overlay_path=str(self.env.overlay_dir /
                                                       overlay_file_name(domain, d.target, state.record.stamp)))
                        for d in self.target.disks]
            self._enter(state, "freezing", overlays=overlays, ram_file=memory_file)
            freeze = lambda: hv.snapshot_external(domain, {o.target: o.overlay_path for o in overlays},  # noqa: E731
                                                  memory_file, live=policy.live, skip_disks=skipped)
        elif memory_file:
            self._enter(state, "freezing", ram_file=memory_file, paused_by_us=vm_state == RUNNING)
            freeze = lambda: hv.snapshot_manual(domain, targets, memory_file,  # noqa: E731
                                                live=policy.live, skip_disks=skipped)
        else:
            # pause method without memory: the guest stands still while ZFS takes its disks.
            self._enter(state, "freezing", paused_by_us=vm_state == RUNNING)
            freeze = (lambda: hv.suspend(domain)) if vm_state == RUNNING else (lambda: None)
        try:
            freeze()
        except HypervisorError as exc:
            self._settle_failed_freeze(state, vm_state, exc)
            raise
        self._enter(state, "frozen")

    def _settle_failed_freeze(self, state: CycleState, vm_state: str, exc: Exception) -> None:
        """The freeze failed: find out what libvirt really did, undo it, and leave a journal record that says
        only what is still true (nothing, normally: the external snapshot is atomic)."""
        domain = self.target.domain
        hv = self.env.hypervisor
        try:
            now = hv.state(domain)
        except DomainNotFound:
            now = "gone"
        except HypervisorError as err:
            self._log(logging.ERROR, state, "freeze", f"failed ({exc}) and the domain cannot be inspected: {err}")
            return  # keep the record as it is: recover will look again
        if now not in (RUNNING, PAUSED):
            for o in state.record.overlays:
                self._discard(Path(o.overlay_path))
            if state.record.ram_file:
                self._discard(Path(state.record.ram_file))
            self._enter(state, "freezing", overlays=[], ram_file=None, paused_by_us=False)
            raise CycleFailed(f"domain {domain} is no longer running (was {vm_state}, now {now}): it stopped during "
                              f"the cycle; no snapshot taken ({exc})") from exc
        if state.record.overlays:
            on_overlay = {d.target for d in hv.overlay_disks(domain, self.env.overlay_dir)}
            if on_overlay:  # should not happen (atomic), but if it did: the normal path commits them back
                self._enter(state, "frozen", overlays=[o for o in state.record.overlays if o.target in on_overlay])
                self._unfreeze(state, vm_state)
            for o in state.record.overlays:
                self._discard(Path(o.overlay_path))
        if state.record.paused_by_us and vm_state == RUNNING and now == PAUSED:
            hv.resume(domain)
        if state.record.ram_file:
            self._discard(Path(state.record.ram_file))
        self._enter(state, "freezing", overlays=[], ram_file=None, paused_by_us=False)

    def _unfreeze(self, state: CycleState, vm_state: str) -> None:
        domain = self.target.domain
        hv = self.env.hypervisor
        if state.record.overlays:
            failed: list[tuple[str, str]] = []
            last: Exception | None = None
            for overlay in state.record.overlays:
                error = self._commit_one(state, overlay)
                if error is None:
                    self._discard(Path(overlay.overlay_path))
                else:
                    failed.append((overlay.target, overlay.overlay_path))
                    last = error
            if failed:
                self._enter(state, "commit_failed",
                            overlays=[o for o in state.record.overlays if (o.target, o.overlay_path) in failed])
                raise StillOnOverlay(failed, last)
            self._enter(state, "committed", overlays=[])
        elif state.record.paused_by_us:
            try:
                hv.resume(domain)
            except HypervisorError:
                if hv.exists(domain) and hv.state(domain) == PAUSED:
                    raise
                state.warnings.append(f"{domain} stopped during the cycle: nothing to resume")
            self._enter(state, "resumed", paused_by_us=False)

    def _commit_one(self, state: CycleState, overlay: OverlayRecord) -> Exception | None:
        """Bring one disk back onto its base: live blockcommit + pivot (retried), or, when the domain stopped
        meanwhile, an offline commit of the overlay file with the definition pointed back at the base."""
        domain = self.target.domain
        hv = self.env.hypervisor
        last: Exception | None = None
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                now = hv.state(domain)
            except DomainNotFound:
                now = "gone"
            except HypervisorError as exc:
                now, last = None, exc
            try:
                if now in (RUNNING, PAUSED):
                    hv.commit_active(domain, overlay.target)
                    return None
                if now == "gone":
                    hv.commit_overlay_file(overlay.overlay_path)
                    msg = f"domain {domain} vanished during the cycle; overlay of {overlay.target} merged into its base"
                elif now is not None:
                    hv.commit_offline(domain, overlay.target, overlay.overlay_path)
                    msg = (f"domain {domain} shut off during the cycle; overlay of {overlay.target} committed offline "
                           f"into {overlay.base_path}")
                else:
                    raise last
                state.warnings.append(msg)
                self._log(logging.WARNING, state, "commit", msg)
                return None
            except HypervisorError as exc:
                last = exc
                self._log(logging.WARNING, state, "commit",
                          f"{overlay.target} attempt {attempt}/{COMMIT_ATTEMPTS}: {exc}")
            if attempt < COMMIT_ATTEMPTS:
                time.sleep(COMMIT_RETRY_DELAY_S * attempt)
        return last

    # -- steps shared by both kinds -------------------------------------------------------------------------

    def _save_domain_xml(self, state: CycleState) -> None:
        """Copy the domain XML (and NVRAM kept outside the dataset) into the VM's first dataset,
        so a snapshot carries what is needed to bring the VM back even if libvirt's copy is lost."""
        info = self.env.listing.datasets.get(self.target.datasets[0])
        if info is None or not info.mountpoint:
            state.warnings.append(f"{self.target.datasets[0]} is not mounted: domain XML not saved in it")
            return
        if self.env.dry_run:
            log.info("dry-run: would save the domain XML of %s into %s", self.target.domain, info.mountpoint)
            return
        folder = Path(info.mountpoint) / XML_DIR
        xml = self.env.hypervisor.xml(self.target.domain, inactive=True)  # with secrets: root's eyes only
        name = encode_name(self.target.domain)
        try:
            ensure_private_directory(folder)
            write_file_atomically(folder / f"{name}.xml", xml.encode())
            nvram = nvram_path(xml)
            if nvram and os.path.exists(nvram) and not nvram.startswith(info.mountpoint.rstrip("/") + "/"):
                copy_file_atomically(Path(nvram), folder / f"{name}.nvram")
        except UnsafePath as exc:
            # The snapshot is still worth taking; the admin is told every cycle until the folder is fixed.
            problem = f"domain XML not saved: {exc}"
            state.warnings.append(problem)
            self._log(logging.WARNING, state, "xml", problem)
            return
        self._enter(state, "xml_saved")

    def _snapshot_datasets(self, state: CycleState, *, atomic_needed: bool) -> None:
        datasets = self.target.datasets
        subtree = self._subtree_root(datasets)
        for name in self.names:
            try:
                if subtree:
                    # One command for the whole subtree: atomic on zfs-fuse too (which takes one name per command).
                    self.env.zfs.snapshot_recursive(subtree, name)
                    atomic = True
                else:
                    atomic = self.env.zfs.snapshot(datasets, name)
            except SnapshotExists:
                state.warnings.append(f"{name} already exists on {','.join(datasets)}")
                continue
            state.taken += [f"{ds}@{name}" for ds in datasets]
            if atomic_needed and not atomic:
                msg = (f"snapshots of {','.join(datasets)} were taken one by one, not atomically "
                       "(zfs-fuse takes one name per command); they may differ by a few milliseconds")
                state.warnings.append(msg)
                self._log(logging.WARNING, state, "snapshot", msg)
        self._enter(state, "snapshotted")

    def _subtree_root(self, datasets: list[str]) -> str | None:
        """The dataset whose whole subtree is exactly `datasets` (two or more), else None."""
        if len(datasets) < 2:
            return None
        root = min(datasets, key=len)
        below = {d for d in self.env.listing.datasets if d == root or d.startswith(root + "/")}
        return root if below == set(datasets) else None

    def _keep_dump(self, state: CycleState) -> None:
        domain = self.target.domain
        info = RamDumpInfo(
            domain=domain,
            stamp=state.record.stamp,
            datasets=list(self.target.datasets),
            snapshot_names=self.names,
            domain_xml=self.env.hypervisor.xml(domain, inactive=True),
            disks=[DumpDisk(target=d.target, source=d.source,
                            dataset=dataset_of_path(d.source, self.env.listing) or self.target.datasets[0])
                   for d in self.target.disks],
            method=state.record.method,
            live=self.target.policy.live,
            quiesced=state.record.quiesced,
            pause_ms=state.record.pause_ms,
        )
        if self.env.dry_run:
            log.info("dry-run: would keep the RAM dump of %s in %s", domain, self.env.ram_store.ram_dir)
            return
        dump = self.env.ram_store.keep(Path(state.record.ram_file), info, self.env.ram_compression)
        self._enter(state, "dump_kept", ram_file=None, ram_dump=str(dump.path))
        self._log(logging.INFO, state, "dump_kept", f"{dump.path} ({dump.size >> 20} MiB)")

    def _discard(self, path: Path) -> None:
        if self.env.dry_run:
            return
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def _hook(self, state: CycleState, phase: str, pre_failed: bool = False) -> HookResult | None:
        """Run the target's hook for `phase`, if it has one; None when there is none."""
        hooks = self.target.policy.hooks
        argv = getattr(hooks, phase)
        if not argv:
            return None
        env = HookEnv(phase=phase, datasets=list(self.target.datasets), snapshot_names=self.names,
                      domain=self.target.domain, ram_dump=state.record.ram_dump, pre_failure=pre_failed)
        timeout = hooks.timeout if hooks.timeout is not None else self.env.hook_timeout
        return run_hook(argv, env, timeout, self.env.dry_run, log_context=self.target.name)


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
