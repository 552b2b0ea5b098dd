"""Finish or undo whatever a crash interrupted. Idempotent; runs at the start of `run`/`once` too.

For every cycle record left in the journal, and for every domain with a disk in `overlay_dir`
(also overlays made by a crashed older run or by hand-written sanoid scripts):
- a frozen guest file system is thawed;
- a disk running on an overlay is committed back into its base file and pivoted, the overlay removed;
  a domain that stopped while on an overlay gets it committed offline (`qemu-img commit`) and its
  definition pointed back at the base file; an overlay is never deleted while a domain still uses it;
- a guest the cycle paused is resumed;
- libvirt snapshot metadata left by vmsnapd (or describing overlays in overlay_dir) is removed;
- the RAM file of the interrupted cycle is deleted (its zfs snapshots, if any, stay as disk-only
  restore points: the dump cannot be vouched for, so it is not kept).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, Field

from vmsnapd.actions.context import Context
from vmsnapd.hypervisor import PAUSED, RUNNING, DomainNotFound, HypervisorError, parse_disks
from vmsnapd.journal import made_by_vmsnapd

log = logging.getLogger(__name__)


class RecoverReport(BaseModel):
    actions: list[str] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.errors)


def recover(ctx: Context) -> RecoverReport:
    report = RecoverReport()
    prefix = "dry-run: " if ctx.dry_run else ""
    overlay_dir = Path(ctx.config.daemon.overlay_dir)
    scan = ctx.journal.scan()
    for bad in scan.unreadable:
        report.errors.append(f"unreadable journal record {bad.path}: {bad.reason} (inspect and remove it)")
    handled_domains: set[str] = set()
    for record in scan.records:
        problems: list[str] = []
        in_use: set[str] = set()
        if record.domain:
            handled_domains.add(record.domain)
            problems += _bring_back(ctx, record.domain, overlay_dir, report,
                                    thaw=record.fs_frozen, resume=record.paused_by_us)
            problems += _orphan_overlays(ctx, record, report)
            in_use = _sources_in_use(ctx, record.domain, problems)
        overlays = [o.overlay_path for o in record.overlays] if not problems else []
        for path in [record.ram_file] + overlays:
            if path and not made_by_vmsnapd(path, record.domain, overlay_dir):
                report.errors.append(f"journal record {record.cycle_id} names {path}, not a file vmsnapd makes "
                                     f"in {overlay_dir}: left alone (inspect the record)")
                continue
            if path and path not in in_use and Path(path).exists():
                if not ctx.dry_run:
                    Path(path).unlink(missing_ok=True)
                report.actions.append(f"{prefix}deleted {path} left by interrupted cycle {record.cycle_id}")
        if problems:
            report.errors += problems
            continue  # keep the record: the next recover tries again
        if not ctx.dry_run:
            ctx.journal.finish(record)
        report.actions.append(f"{prefix}closed interrupted cycle {record.cycle_id} (was in state {record.state})")
    _untracked_overlays(ctx, overlay_dir, handled_domains, report)
    for line in report.actions:
        log.warning("recover: %s", line)
    for line in report.errors:
        log.error("recover: %s", line)
    return report


def _untracked_overlays(ctx: Context, overlay_dir: Path, skip: set[str], report: RecoverReport) -> None:
    """Bring back domains the journal does not know about that still run on an overlay in overlay_dir."""
    try:
        names = ctx.hypervisor.domain_names()
    except HypervisorError as exc:
        if skip or ctx.journal.pending():
            report.errors.append(f"cannot list domains: {exc}")
        return
    for name in names:
        if name in skip:
            continue
        try:
            on_overlay = ctx.hypervisor.overlay_disks(name, overlay_dir)
        except DomainNotFound:
            continue  # undefined since it was listed: nothing of it can be on an overlay any more
        except HypervisorError as exc:
            report.errors.append(f"{name}: {exc}")
            continue
        if on_overlay:
            report.errors += _bring_back(ctx, name, overlay_dir, report, thaw=False, resume=False)


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


def _orphan_overlays(ctx: Context, record, report: RecoverReport) -> list[str]:
    """The domain of an interrupted cycle no longer exists: merge its overlays into their base files so the
    writes made since the snapshot are not lost with them."""
    prefix = "dry-run: " if ctx.dry_run else ""
    try:
        if ctx.hypervisor.exists(record.domain):
            return []
    except HypervisorError as exc:
        return [f"{record.domain}: {exc}"]
    problems = []
    for overlay in record.overlays:
        if not Path(overlay.overlay_path).exists():
            continue
        try:
            base = ctx.hypervisor.commit_overlay_file(overlay.overlay_path)
            report.actions.append(f"{prefix}merged overlay {overlay.overlay_path} of vanished domain "
                                  f"{record.domain} into {base}")
        except HypervisorError as exc:
            problems.append(f"overlay {overlay.overlay_path} of vanished domain {record.domain}: {exc}")
    return problems


def _bring_back(ctx: Context, domain: str, overlay_dir: Path, report: RecoverReport, *,
                thaw: bool, resume: bool) -> list[str]:
    hv = ctx.hypervisor
    prefix = "dry-run: " if ctx.dry_run else ""
    problems: list[str] = []
    try:
        state = hv.state(domain)
    except DomainNotFound:
        report.actions.append(f"domain {domain} no longer exists; nothing to bring back")
        return []
    except HypervisorError as exc:
        return [f"{domain}: {exc}"]
    if thaw and state == RUNNING:
        try:
            hv.fs_thaw(domain)
            report.actions.append(f"{prefix}thawed file systems of {domain}")
        except HypervisorError as exc:
            report.actions.append(f"thaw of {domain} not possible ({exc}); assuming not frozen")
    try:
        on_overlay = hv.overlay_disks(domain, overlay_dir)
        if state not in (RUNNING, PAUSED):
            on_overlay += [d for d in hv.defined_on_overlay(domain, overlay_dir) if d not in on_overlay]
    except HypervisorError as exc:
        return [f"{domain}: {exc}"]
    for disk in on_overlay:
        try:
            if state in (RUNNING, PAUSED):
                hv.commit_active(domain, disk.target)
                how = "committed"
            else:
                base = hv.commit_offline(domain, disk.target, disk.source)
                how = f"committed offline ({domain} is {state}) into {base},"
        except HypervisorError as exc:
            problems.append(f"{domain} disk {disk.target} still on overlay {disk.source}: {exc}")
            continue
        if not ctx.dry_run:
            Path(disk.source).unlink(missing_ok=True)
        report.actions.append(f"{prefix}{how} {domain} {disk.target} back from overlay {disk.source}")
    try:
        for name in hv.delete_snapshot_metadata(domain, only_ours_or_in=overlay_dir):
            report.actions.append(f"{prefix}removed stale libvirt snapshot metadata {domain}/{name}")
    except HypervisorError as exc:
        problems.append(f"{domain}: {exc}")
    if resume and hv.state(domain) == PAUSED:
        try:
            hv.resume(domain)
            report.actions.append(f"{prefix}resumed {domain}, paused by an interrupted cycle")
        except HypervisorError as exc:
            problems.append(f"{domain} stays paused: {exc}")
    return problems
