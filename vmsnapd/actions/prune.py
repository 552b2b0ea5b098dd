"""Prune: the policy computes the prune set per dataset, the adapter destroys it, then the RAM dumps
whose cycle lost its last snapshot go too.

Order per dataset: `prune_defer` (pool capacity) → `pre_prune` hook once per snapshot (non-zero
exit: that snapshot, and so its dump, stays) → destroy → after every dataset: the RAM sweep →
`post_prune` once per dataset with what was destroyed and which dumps went.

A RAM dump is deleted only when no snapshot of its cycle remains on any of its datasets (or by
`ram_keep`), judged on a listing taken after the destroys. A dump whose datasets are not all in that
listing (outside the configured trees, or the listing failed) is never judged: vmsnapd does not
delete what it cannot see to be orphaned. Held snapshots and snapshots that are not ours never reach
the prune set (policy.prune_set).
"""

from __future__ import annotations

import logging
import time

from pydantic import BaseModel, Field

from vmsnapd.actions.context import Context, Survey
from vmsnapd.report import PassReport, TargetOutcome
from vmsnapd.asides import RestoreFailed, kept_aside_snapshots
from vmsnapd.config import DatasetPolicy
from vmsnapd.hooks import HookEnv, run_hook
from vmsnapd.logsetup import NOTICE, dry_run_prefix, fields, log_fields
from vmsnapd.names import InvalidName
from vmsnapd.models import Snapshot
from vmsnapd.parallel import ordered_map
from vmsnapd.policy import prune_deferred, prune_set
from vmsnapd.pruneguard import PruneGuard
from vmsnapd.ramsweep import PlannedDeletion, plan_ram_sweep
from vmsnapd.zfs import HasDependents, ZfsError, dependents_named

log = logging.getLogger(__name__)


class DumpSweep(BaseModel):
    deleted: list[str] = Field(default_factory=list)  # paths (or that would be, in dry run)
    deleted_by_dataset: dict[str, list[str]] = Field(default_factory=dict)
    bytes_freed: int = 0
    errors: list[str] = Field(default_factory=list)


def prune(ctx: Context, survey: Survey | None = None, force_dumps: bool = False,
          guard: PruneGuard | None = None) -> PassReport:
    survey = survey or ctx.survey()
    report = PassReport(dry_run=ctx.dry_run)
    prefix = dry_run_prefix(ctx.dry_run)
    capacity: dict[str, int] = {}
    destroyed: dict[str, list[Snapshot]] = {}
    work: list[tuple[DatasetPolicy, list[Snapshot]]] = []
    now = ctx.now()
    for dataset, policy in survey.policies.items():
        if not policy.autoprune:
            continue
        snapshots = survey.listing.snapshots_of(dataset)
        doomed = prune_set(policy, snapshots, now)
        if guard is not None and not guard.admits(policy, snapshots, doomed):
            report.outcomes.append(TargetOutcome(
                action="prune", target=dataset, datasets=[dataset], dry_run=ctx.dry_run,
                kept=[s.full_name for s in doomed],
                warnings=[f"held back by the prune guard: {len(doomed)} snapshot(s) would go; "
                          "confirm with `vmsnapd once --prune --confirm`"]))
            continue
        if doomed:
            work.append((policy, doomed))
    # Datasets side by side, up to `zfs_jobs` (docs/pruning.md "Speed"); each one's snapshots oldest first.
    outcomes = ordered_map(lambda w: _prune_one(ctx, w[0], w[1], capacity), work,
                           ctx.config.daemon.zfs_jobs, "prune")
    for (policy, doomed), outcome in zip(work, outcomes, strict=True):
        if outcome is not None:
            destroyed[policy.name] = [s for s in doomed if s.full_name in outcome.snapshots]
            report.outcomes.append(outcome)

    sweep = sweep_dumps(ctx, survey, destroyed, force=force_dumps)
    report.errors += sweep.errors
    _post_prune_hooks(ctx, survey, report, sweep)
    if sweep.deleted:
        log.info("%sRAM dumps deleted: %d, %d MiB freed", prefix, len(sweep.deleted), sweep.bytes_freed >> 20)
    report.dumps_deleted = sweep.deleted
    report.dump_bytes_freed = sweep.bytes_freed
    if guard is not None:
        try:
            guard.save()
        except OSError as exc:
            report.errors.append(f"cannot record confirmed policies in {guard.path}: {exc}")
    return report


def _prune_one(ctx: Context, policy: DatasetPolicy, doomed: list[Snapshot],
               capacity: dict[str, int]) -> TargetOutcome | None:
    """Destroy one dataset's prune set, unless prune_defer waits (None). Errors end in the outcome: one dataset
    that cannot be pruned (pool unreadable, a name vmsnapd refuses) never stops the others."""
    dataset = policy.name
    prefix = dry_run_prefix(ctx.dry_run)
    try:
        if policy.prune_defer:
            pool = dataset.split("/", 1)[0]
            if pool not in capacity:
                capacity[pool] = ctx.zfs.pool_capacity(pool)
            if prune_deferred(policy, capacity[pool]):
                log.info("%sprune of %s deferred: pool %s is %d%% used, prune_defer = %d", prefix, dataset,
                         pool, capacity[pool], policy.prune_defer)
                return None
        with log_fields(dataset=dataset):
            return _prune_dataset(ctx, policy, doomed)
    except (ZfsError, InvalidName) as exc:
        log.error("%sprune of %s failed: %s", prefix, dataset, exc, extra=fields(dataset=dataset))
        return TargetOutcome(action="prune", target=dataset, datasets=[dataset], dry_run=ctx.dry_run,
                             kept=[s.full_name for s in doomed], error=str(exc))


def _post_prune_hooks(ctx: Context, survey: Survey, report: PassReport, sweep: DumpSweep) -> None:
    for outcome in report.outcomes:
        dataset = outcome.target
        policy = survey.policies[dataset]
        if policy.hooks.post_prune and outcome.snapshots:
            env = HookEnv(phase="post_prune", datasets=[dataset],
                          snapshot_names=[s.split("@", 1)[1] for s in outcome.snapshots],
                          destroyed=outcome.snapshots,
                          dumps_deleted=sweep.deleted_by_dataset.get(dataset, []))
            result = run_hook(policy.hooks.post_prune, env, _hook_timeout(ctx, policy), ctx.dry_run, dataset)
            if not result.ok:
                outcome.warnings.append(f"post_prune hook failed: {result.error}")


def _hook_timeout(ctx: Context, policy: DatasetPolicy) -> float:
    return policy.hooks.timeout if policy.hooks.timeout is not None else ctx.config.daemon.hook_timeout


def _prune_dataset(ctx: Context, policy: DatasetPolicy, doomed: list[Snapshot]) -> TargetOutcome:
    dataset = policy.name
    prefix = dry_run_prefix(ctx.dry_run)
    started = time.monotonic()
    outcome = TargetOutcome(action="prune", target=dataset, datasets=[dataset], dry_run=ctx.dry_run)
    go: list[Snapshot] = []
    for snap in doomed:
        if policy.hooks.pre_prune:
            env = HookEnv(phase="pre_prune", datasets=[dataset], snapshot_names=[snap.name])
            result = run_hook(policy.hooks.pre_prune, env, _hook_timeout(ctx, policy), ctx.dry_run, dataset)
            if not result.ok:
                outcome.kept.append(snap.full_name)
                outcome.warnings.append(f"pre_prune hook kept {snap.full_name}: {result.error}")
                continue
        go.append(snap)
    failed = ctx.zfs.destroy_snapshots(dataset, [s.name for s in go])
    for snap in go:
        exc = failed.get(snap.name)
        if exc is None:
            outcome.snapshots.append(snap.full_name)
            continue
        outcome.kept.append(snap.full_name)
        if isinstance(exc, HasDependents):
            outcome.warnings.append(_kept_for_clones(snap, exc))
            log.warning("%s%s", prefix, outcome.warnings[-1])
        else:
            log.error("%scould not destroy %s: %s", prefix, snap.full_name, exc)
    errors = [str(e) for e in failed.values() if not isinstance(e, HasDependents)]
    if errors:
        outcome.error = f"{len(errors)} snapshot(s) could not be destroyed: " + "; ".join(errors)
    outcome.duration_ms = int((time.monotonic() - started) * 1000)
    gone = [s.split("@", 1)[1] for s in outcome.snapshots]
    log.log(NOTICE if gone else logging.INFO, "%spruned dataset=%s domain=- destroyed=%d snapshot=%s duration_ms=%d",
            prefix, dataset, len(gone), ",".join(gone), outcome.duration_ms, extra=fields(snapshot=gone))
    return outcome


def _kept_for_clones(snap: Snapshot, exc: HasDependents) -> str:
    """A snapshot a clone depends on (`restore --clone`, the state an in-place restore keeps aside, an admin's
    `zfs clone`) stays, as a held one does: kept and said, not a failure of every pass (docs/pruning.md)."""
    clones = dependents_named(exc.stderr_tail)
    return (f"kept {snap.full_name}: {', '.join(clones) or 'a clone'} depend{'s' if len(clones) < 2 else ''} on it; "
            "it goes once that is destroyed or promoted")


def sweep_dumps(ctx: Context, survey: Survey, destroyed: dict[str, list[Snapshot]],
                force: bool = False) -> DumpSweep:
    """Delete the RAM dumps whose cycle has no snapshot left (and those past `ram_keep`): vmsnapd.ramsweep
    decides, this carries it out."""
    result = DumpSweep()
    store = ctx.ram_store
    if not store.ram_dir.exists():
        return result
    try:
        live, listed = _live_after_prune(ctx, survey, destroyed)
    except (ZfsError, RestoreFailed) as exc:
        result.errors.append(f"RAM dumps not swept: {exc}")
        return result
    ram_keep = {name: policy.ram_keep for name, policy in survey.policies.items()}
    plan = plan_ram_sweep(store.dumps(), live, listed, ram_keep, force=force)
    for dump in plan.not_judged:
        log.debug("RAM dump %s not judged: its datasets are not all under the configured trees", dump.path)
    for item in plan.deletions:
        _delete_dump(ctx, item, result)
    return result


def _live_after_prune(ctx: Context, survey: Survey,
                      destroyed: dict[str, list[Snapshot]]) -> tuple[set[tuple[str, str]], set[str]]:
    """The snapshots that exist after this pass's destroys (in dry run: the survey minus what would go) and
    the datasets that listing covers. Snapshots a restore set aside (with the state it replaced) count as
    existing: `restore --undo` needs their RAM dumps. Raises ZfsError or RestoreFailed: nothing is swept."""
    if ctx.dry_run:
        gone = {(ds, s.name) for ds, snaps in destroyed.items() for s in snaps}
        listing = survey.listing
        live = {(s.dataset, s.name) for s in listing.snapshots} - gone
    else:
        try:
            listing = ctx.zfs.list_tree(ctx.config_roots())
        except ZfsError as exc:
            raise ZfsError(f"cannot list snapshots after pruning: {exc}") from exc
        live = {(s.dataset, s.name) for s in listing.snapshots}
    try:
        live |= kept_aside_snapshots(ctx.state_dir, ctx.zfs, listing)
    except (ZfsError, RestoreFailed) as exc:
        raise RestoreFailed(f"cannot tell which snapshots a restore set aside: {exc}") from exc
    return live, set(listing.datasets)


def _delete_dump(ctx: Context, item: PlannedDeletion, result: DumpSweep) -> None:
    try:
        freed = ctx.ram_store.delete(item.dump, ctx.dry_run, item.reason)
    except OSError as exc:
        result.errors.append(f"cannot delete RAM dump {item.dump.path}: {exc}")
        return
    result.deleted.append(str(item.dump.path))
    for dataset in item.dump.manifest.datasets if item.dump.manifest else []:
        result.deleted_by_dataset.setdefault(dataset, []).append(str(item.dump.path))
    result.bytes_freed += freed
    log.info("%sRAM dump %s deleted (%s), %d MiB", dry_run_prefix(ctx.dry_run), item.dump.path, item.reason,
             freed >> 20)
