"""One pass like `sanoid --cron`: check the folders, recover, take what is due, prune. Shared by `once` and the
daemon. A failed folder check (vmsnapd/actions/folders.py) refuses the whole pass before anything is touched.

The caller holds the pass lock.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from datetime import datetime

from vmsnapd.actions.context import Context, Survey
from vmsnapd.actions.folders import check_folders
from vmsnapd.actions.prune import prune
from vmsnapd.actions.recover import recover
from vmsnapd.report import PassReport
from vmsnapd.actions.status import clear_refused, record_refused, record_results
from vmsnapd.actions.take import take_due
from vmsnapd.hvtypes import HypervisorError
from vmsnapd.models import Snapshot
from vmsnapd.pruneguard import PruneGuard
from vmsnapd.zfs import ZfsError

log = logging.getLogger(__name__)


def run_pass(ctx: Context, *, take: bool = True, prune_too: bool = True, force_dumps: bool = False,
             guard: PruneGuard | None = None) -> PassReport:
    report = PassReport(dry_run=ctx.dry_run)
    survey_error = None
    try:
        survey = ctx.survey()
    except (ZfsError, HypervisorError) as exc:
        survey, survey_error = None, exc
    # Before anything is touched: unsafe folders (e.g. a config edited after start) refuse the whole pass.
    folders = check_folders(ctx, survey)
    if not folders.ok:
        report.errors += [f"pass refused, nothing done: {p}" for p in folders.problems]
        record_refused(ctx, report, folders.problems)  # check says CRITICAL until a pass runs again
        return report
    clear_refused(ctx, report)
    recovered = recover(ctx, survey, folders=folders)
    report.errors += [f"recover: {e}" for e in recovered.errors]
    if survey is None:
        report.errors.append(f"cannot survey the host: {survey_error}")
        return report
    report.errors += _listing_problems(survey)
    if take:
        report = report.merge(take_due(ctx, survey))
    if prune_too:
        report = _prune_after(ctx, survey, report, took=take, force_dumps=force_dumps, guard=guard)
    record_results(ctx, report)
    return report


def _listing_problems(survey: Survey) -> list[str]:
    # A typo in the policy file would otherwise leave a VM unprotected without anyone noticing.
    problems = [f"configured dataset {missing} does not exist" for missing in survey.listing.missing_roots]
    # An unreadable dataset is left out of this pass; the others go on.
    problems += [f"dataset {dataset} skipped: cannot read what zfs says about it: {why}"
                 for dataset, why in survey.listing.unreadable.items()]
    return problems


def _prune_after(ctx: Context, survey: Survey, report: PassReport, *, took: bool, force_dumps: bool,
                 guard: PruneGuard | None) -> PassReport:
    """Prune on a listing that counts what this pass took (or, in dry run, would have taken). Nothing taken: the
    first listing still holds (a nothing-due pass lists once)."""
    if took and report.outcomes:
        try:
            survey = ctx.survey()  # what the take just added counts for retention
        except (ZfsError, HypervisorError) as exc:
            report.errors.append(f"cannot survey the host before pruning: {exc}")
            return report
        if ctx.dry_run:  # nothing was taken: count what would have been, or the plan is not the pass
            survey = _assume_taken(survey, report, ctx.now())
    return report.merge(prune(ctx, survey, force_dumps=force_dumps, guard=guard))


def _assume_taken(survey: Survey, report: PassReport, now: datetime) -> Survey:
    planned = [Snapshot(dataset=full.split("@", 1)[0], name=full.split("@", 1)[1], creation=now)
               for o in report.outcomes if o.action == "take" and o.ok for full in o.snapshots]
    listing = copy.copy(survey.listing)
    listing.snapshots = sorted(listing.snapshots + planned, key=lambda s: (s.dataset, s.creation, s.name))
    return dataclasses.replace(survey, listing=listing)
