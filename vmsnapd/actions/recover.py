"""Finish or undo whatever a crash interrupted. Idempotent; runs at the start of `run`/`once` too.

Recovery touches ONLY what is provably vmsnapd's (rules: vmsnapd/ownership.py; docs/operations.md,
"What vmsnapd will never touch"). It first refuses to run at all when the folders vmsnapd writes are
unsafe on this host (vmsnapd/actions/folders.py). Then, for every cycle record left in the journal and for
every managed domain:
- a frozen guest file system is thawed;
- a disk running on one of vmsnapd's overlays is committed back into its base file and pivoted, the overlay
  removed; a domain that stopped while on an overlay gets it committed offline (`qemu-img commit`) and its
  definition pointed back at the base file; a running domain whose persistent definition alone still names
  an overlay (the running disk is back on the base) gets its definition pointed back at the base; an overlay
  is never deleted while a domain still uses it;
- a guest the cycle paused is resumed;
- libvirt snapshot records that are vmsnapd's are removed (metadata only);
- the RAM file of the interrupted cycle is deleted (its zfs snapshots, if any, stay as disk-only
  restore points: the dump cannot be vouched for, so it is not kept).
Everything else met on the way (an unmanaged domain's disk in overlay_dir, an overlay whose name or backing
file is not vmsnapd's, someone else's snapshot record) is reported as a warning and left alone.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

from pydantic import BaseModel, Field

from vmsnapd.actions.context import Context, Survey
from vmsnapd.actions.folders import FolderCheck, check_folders
from vmsnapd.commitback import commit_back, state_or_gone
from vmsnapd.cycleplan import ACTIVE, GONE, CommitWay
from vmsnapd.domxml import parse_disks
from vmsnapd.hvtypes import PAUSED, RUNNING, HypervisorError
from vmsnapd.journal import CycleRecord
from vmsnapd.logsetup import dry_run_prefix
from vmsnapd.names import InvalidName
from vmsnapd.ramstore import RamStoreError
from vmsnapd.ownership import (DomainFacts, OverlayFile, Ownership, RecoveryPlan, Step, StepKind,
                               deletable_leftover, foreign_domain_warnings, inside, judge_overlay, norm,
                               plan_domain)
from vmsnapd.targets import dataset_of_path, wanted_domain
from vmsnapd.zfs import ZfsError

log = logging.getLogger(__name__)


class RecoverReport(BaseModel):
    actions: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)  # met and left alone: not vmsnapd's
    errors: list[str] = Field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.errors)


def recover(ctx: Context, survey: Survey | None = None, *, folders: FolderCheck | None = None) -> RecoverReport:
    """`survey`: the pass's view of the host (listed here when not given). `folders`: the passed folder check
    the caller already ran (a pass does, before anything else); its reading of the domains' disks is used."""
    report = RecoverReport()
    if survey is None:
        survey = _survey_or_none(ctx, report)
    if folders is None:
        folders = check_folders(ctx, survey)
        if not folders.ok:
            report.errors += [f"refused, nothing recovered: {p}" for p in folders.problems]
            _log(report)
            return report
    owner = _ownership(ctx, survey, report, folders.domain_disks)
    scan = ctx.journal.scan()
    for bad in scan.unreadable:
        report.errors.append(f"unreadable journal record {bad.path}: {bad.reason} (inspect and remove it)")
    handled_domains: set[str] = set()
    for record in scan.records:
        if record.domain:
            handled_domains.add(record.domain)
        _recover_record(ctx, record, owner, survey, report)
    _untracked(ctx, owner, survey, handled_domains, report, folders.domain_disks)
    _log(report)
    return report


def _log(report: RecoverReport) -> None:
    for line in report.actions:
        log.warning("recover: %s", line)
    for line in report.warnings:
        log.warning("recover: %s", line)
    for line in report.errors:
        log.error("recover: %s", line)


def _survey_or_none(ctx: Context, report: RecoverReport) -> Survey | None:
    try:
        return ctx.survey()
    except (ZfsError, HypervisorError) as exc:
        report.warnings.append(f"cannot list the managed datasets ({exc}): only what the journal names is "
                               "recovered")
        return None


def _ownership(ctx: Context, survey: Survey | None, report: RecoverReport,
               domain_disks: dict[str, list[tuple[str, str]]] | None) -> Ownership:
    """overlay_dir, the staging folder and the managed domains (those some dataset's policy maps to).
    `domain_disks`: the folder check's reading of every defined domain (None: ask libvirt for the names)."""
    folders = _folders(ctx)
    if survey is None or not any(p.domain != "none" for p in survey.policies.values()):
        return folders
    try:
        domains = set(domain_disks) if domain_disks is not None else set(ctx.hypervisor.domain_names())
    except HypervisorError as exc:
        report.warnings.append(f"cannot list domains ({exc}): only what the journal names is recovered")
        return folders
    managed = {wanted_domain(policy, domains) for policy in survey.policies.values()} - {None}
    return replace(folders, managed_domains=frozenset(managed))


def _folders(ctx: Context) -> Ownership:
    """vmsnapd's folders of fresh files, no managed domain."""
    daemon = ctx.config.daemon
    staging = daemon.ram_staging_dir
    return Ownership(overlay_dir=norm(str(daemon.overlay_dir)), staging_dir=norm(staging) if staging else "")


def _recover_record(ctx: Context, record: CycleRecord, owner: Ownership, survey: Survey | None,
                    report: RecoverReport) -> None:
    prefix = dry_run_prefix(ctx.dry_run)
    problems: list[str] = []
    in_use: set[str] = set()
    if record.domain:
        journaled = {o.overlay_path: o.base_path for o in record.overlays}
        problems += _bring_back(ctx, record.domain, owner, survey, report, thaw=record.fs_frozen,
                                resume=record.paused_by_us, journaled=journaled)
        problems += _orphan_overlays(ctx, record, report)
        in_use = _sources_in_use(ctx, record.domain, problems)
        _half_made_dump(ctx, record, report)
    overlays = [o.overlay_path for o in record.overlays] if not problems else []
    for path in [record.ram_file] + overlays:
        if not path or path in in_use or not Path(path).exists():
            continue
        if not deletable_leftover(path, record.domain, owner.overlay_dir, owner.staging_dir):
            report.warnings.append(f"journal record {record.cycle_id} names {path}, which is not a file vmsnapd "
                                   "makes: left alone")
            continue
        if not ctx.dry_run:
            try:
                Path(path).unlink(missing_ok=True)
            except OSError as exc:  # a file system refusing it (read-only, failing): the next recover tries again
                problems.append(f"cannot delete {path} left by interrupted cycle {record.cycle_id}: {exc}")
                continue
        report.actions.append(f"{prefix}deleted {path} left by interrupted cycle {record.cycle_id}")
    if problems:
        report.errors += problems
        return  # keep the record: the next recover tries again
    if not ctx.dry_run:
        ctx.journal.finish(record)
    report.actions.append(f"{prefix}closed interrupted cycle {record.cycle_id} (was in state {record.state})")


def _half_made_dump(ctx: Context, record: CycleRecord, report: RecoverReport) -> None:
    """The cycle did not get to keep its dump: whatever it had begun to store for it is half-made, and provably
    its own (the store's name for this domain and stamp, without a manifest)."""
    if record.ram_dump is not None:
        return
    try:
        report.actions += ctx.ram_store.discard_half_made(record.domain, record.stamp, ctx.dry_run)
    except (OSError, RamStoreError, ZfsError) as exc:
        report.warnings.append(f"cannot look for a half-made RAM dump of {record.cycle_id}: {exc}")


def _untracked(ctx: Context, owner: Ownership, survey: Survey | None, skip: set[str], report: RecoverReport,
               every: dict[str, list[tuple[str, str]]] | None) -> None:
    """Domains the journal does not know about: managed ones are brought back from vmsnapd's overlays (a crash
    of an older version, or a record lost); any other domain's disk in overlay_dir is only reported. `every`:
    the folder check's reading of all domains' disks (None: read here). Which domains to look at may come from
    that earlier reading; what is done to one is decided on its state read afresh (`_bring_back`)."""
    try:
        if every is None:
            every = ctx.hypervisor.all_domain_disks()
    except HypervisorError as exc:
        if skip or ctx.journal.pending() or owner.managed_domains:
            report.errors.append(f"cannot list domains: {exc}")
        return
    for name, files in every.items():
        if name in skip:
            continue
        if name not in owner.managed_domains:
            report.warnings += foreign_domain_warnings(name, files, owner)
            continue
        try:
            report.errors += _bring_back(ctx, name, owner, survey, report, thaw=False, resume=False, journaled={})
        except InvalidName as exc:
            report.errors.append(f"{name}: {exc}")


def _sources_in_use(ctx: Context, domain: str, problems: list[str]) -> set[str]:
    """Every disk source of `domain`, live and persistent: files that must never be deleted."""
    try:
        if not ctx.hypervisor.exists(domain):
            return set()
        return ({d.source for d in ctx.hypervisor.disks(domain)}
                | {d.source for d in parse_disks(ctx.hypervisor.xml(domain, inactive=True))})
    except HypervisorError as exc:
        problems.append(f"{domain}: cannot tell which files it uses ({exc}); overlays kept")
        return set()


def _orphan_overlays(ctx: Context, record: CycleRecord, report: RecoverReport) -> list[str]:
    """The domain of an interrupted cycle no longer exists: merge its overlays into their base files so the
    writes made since the snapshot are not lost with them — each only after its header proves it is the
    overlay of the base the record names."""
    prefix = dry_run_prefix(ctx.dry_run)
    try:
        if ctx.hypervisor.exists(record.domain):
            return []
    except HypervisorError as exc:
        return [f"{record.domain}: {exc}"]
    problems = []
    for overlay in record.overlays:
        if not Path(overlay.overlay_path).exists():
            continue
        facts = OverlayFile(backing=_backing(ctx, overlay.overlay_path),
                            journal_base=os.path.realpath(overlay.base_path))
        verdict = judge_overlay(record.domain, overlay.target, overlay.overlay_path, facts,
                                _folders(ctx))
        if not verdict.ours:
            problems.append(f"overlay {overlay.overlay_path} of vanished domain {record.domain} not merged: "
                            f"{verdict.reason}")
            continue
        try:
            _way, base = commit_back(ctx.hypervisor, record.domain, overlay.target, overlay.overlay_path, GONE)
            report.actions.append(f"{prefix}merged overlay {overlay.overlay_path} of vanished domain "
                                  f"{record.domain} into {base}")
        except HypervisorError as exc:
            problems.append(f"overlay {overlay.overlay_path} of vanished domain {record.domain}: {exc}")
    return problems


# -- one domain ---------------------------------------------------------------------------------------------------

def _backing(ctx: Context, path: str) -> str | None:
    """The backing file named in a qcow2 header (resolved), or None (missing, unreadable, no backing file)."""
    if not Path(path).is_file():
        return None
    try:
        backing, _fmt = ctx.hypervisor.backing_of(path)
    except (HypervisorError, ValueError) as exc:
        log.debug("recover: %s: %s", path, exc)
        return None
    return os.path.realpath(backing)


def _domain_facts(ctx: Context, domain: str, active: bool, owner: Ownership, survey: Survey | None,
                  journaled: dict[str, str]) -> DomainFacts:
    hv = ctx.hypervisor
    live = tuple((d.target, d.source) for d in hv.disks(domain))
    persistent = tuple((d.target, d.source) for d in parse_disks(hv.xml(domain, inactive=True)))
    snapshots = tuple(hv.snapshot_records(domain))
    named = [p for _t, p in live + persistent] + [p for s in snapshots for _t, p in s.disks] + list(journaled)
    files = {}
    for path in dict.fromkeys(named):
        if not (inside(path, owner.overlay_dir) or path in journaled):
            continue
        backing = _backing(ctx, path)
        dataset = dataset_of_path(backing, survey.listing) if backing and survey else None
        files[path] = OverlayFile(
            backing=backing,
            backing_dataset=dataset if survey and dataset in survey.policies else None,
            journal_base=os.path.realpath(journaled[path]) if path in journaled else None)
    return DomainFacts(name=domain, active=active, live=live, persistent=persistent, files=files,
                       snapshots=snapshots)


def _bring_back(ctx: Context, domain: str, owner: Ownership, survey: Survey | None, report: RecoverReport, *,
                thaw: bool, resume: bool, journaled: dict[str, str]) -> list[str]:
    hv = ctx.hypervisor
    prefix = dry_run_prefix(ctx.dry_run)
    try:
        state = state_or_gone(hv, domain)
    except HypervisorError as exc:
        return [f"{domain}: {exc}"]
    if state == GONE:
        if journaled or thaw or resume:
            report.actions.append(f"domain {domain} no longer exists; nothing to bring back")
        return []
    if thaw and state == RUNNING:
        try:
            hv.fs_thaw(domain)
            report.actions.append(f"{prefix}thawed file systems of {domain}")
        except HypervisorError as exc:
            report.actions.append(f"thaw of {domain} not possible ({exc}); assuming not frozen")
    try:
        plan = plan_domain(_domain_facts(ctx, domain, state in ACTIVE, owner, survey, journaled), owner)
    except HypervisorError as exc:
        return [f"{domain}: {exc}"]
    report.warnings += plan.warnings
    problems = _carry_out(ctx, domain, state, plan, report)
    if resume and hv.state(domain) == PAUSED:
        try:
            hv.resume(domain)
            report.actions.append(f"{prefix}resumed {domain}, paused by an interrupted cycle")
        except HypervisorError as exc:
            problems.append(f"{domain} stays paused: {exc}")
    return problems


def _carry_out(ctx: Context, domain: str, state: str, plan: RecoveryPlan, report: RecoverReport) -> list[str]:
    hv = ctx.hypervisor
    prefix = dry_run_prefix(ctx.dry_run)
    problems: list[str] = []
    for step in plan.steps:
        if step.kind == StepKind.DROP_METADATA:
            continue
        try:
            how = _overlay_step(ctx, domain, state, step)
        except HypervisorError as exc:
            problems.append(f"{domain} disk {step.target} still on overlay {step.overlay}: {exc}")
            continue
        if not ctx.dry_run:
            Path(step.overlay).unlink(missing_ok=True)
        report.actions.append(f"{prefix}{how} {domain} {step.target} back from overlay {step.overlay}")
    drop = [s.snapshot for s in plan.steps if s.kind == StepKind.DROP_METADATA]
    if drop:
        try:
            for name in hv.delete_snapshot_metadata(domain, drop):
                report.actions.append(f"{prefix}removed stale libvirt snapshot metadata {domain}/{name}")
        except HypervisorError as exc:
            problems.append(f"{domain}: {exc}")
    return problems


def _overlay_step(ctx: Context, domain: str, state: str, step: Step) -> str:
    if step.kind in (StepKind.COMMIT_LIVE, StepKind.COMMIT_OFFLINE):
        # The plan chose by the same state (ownership.plan_domain): live for an active domain, else offline.
        way, base = commit_back(ctx.hypervisor, domain, step.target, step.overlay, state)
        return "committed" if way == CommitWay.LIVE else f"committed offline ({domain} is {state}) into {base},"
    ctx.hypervisor.repoint_definition(domain, step.target, step.overlay)
    return f"pointed the persistent definition (next boot) at its base {step.base}, running on it already:"
