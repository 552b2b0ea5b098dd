"""Prune: the policy computes the prune set per dataset, the adapter destroys it.

Held snapshots and snapshots that are not ours never reach the prune set (policy.prune_set); a
destroy that fails anyway is logged and counted, the other datasets go on.
"""

from __future__ import annotations

import logging
import time

from vmsnapd.actions.context import Context, Survey
from vmsnapd.actions.report import PassReport, TargetOutcome
from vmsnapd.policy import prune_set

log = logging.getLogger(__name__)


def prune(ctx: Context, survey: Survey | None = None) -> PassReport:
    survey = survey or ctx.survey()
    report = PassReport()
    prefix = "dry-run: " if ctx.dry_run else ""
    for dataset, policy in survey.policies.items():
        if not policy.autoprune:
            continue
        doomed = prune_set(policy, survey.listing.snapshots_of(dataset))
        if not doomed:
            continue
        started = time.monotonic()
        outcome = TargetOutcome(action="prune", target=dataset, datasets=[dataset], dry_run=ctx.dry_run)
        failed = ctx.zfs.destroy_snapshots(dataset, [s.name for s in doomed])
        for snap in doomed:
            if snap.name in failed:
                outcome.kept.append(snap.full_name)
                log.error("%scould not destroy %s: %s", prefix, snap.full_name, failed[snap.name])
            else:
                outcome.snapshots.append(snap.full_name)
        if failed:
            outcome.error = f"{len(failed)} snapshot(s) could not be destroyed: " + "; ".join(
                str(e) for e in failed.values())
        outcome.duration_ms = int((time.monotonic() - started) * 1000)
        log.info("%spruned dataset=%s domain=- destroyed=%d snapshot=%s duration_ms=%d", prefix, dataset,
                 len(outcome.snapshots), ",".join(s.split("@", 1)[1] for s in outcome.snapshots),
                 outcome.duration_ms)
        report.outcomes.append(outcome)
    return report
