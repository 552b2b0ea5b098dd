"""Take what is due: ask the policy which periods are due per target, then run one cycle per target.

All periods due in one pass share one timestamp (one cycle). VM cycles run in parallel up to
`max_parallel`, each on a hypervisor connection of its own (vmsnapd.connections); a VM is one target, so never
two cycles of one VM at once. A VM group (vmsnapd.groupcycle) takes one of those slots, its members each run in
a thread (and on a connection) of their own (they must be held still at once). One failing target never stops
the others: its failure is logged and counted in the report.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime
from functools import partial
from pathlib import Path

from vmsnapd.actions.context import Context, Survey
from vmsnapd.connections import Connections
from vmsnapd.report import PassReport, TargetOutcome
from vmsnapd.staging import StagingArea
from vmsnapd.cycle import Cycle, CycleEnv
from vmsnapd.groupcycle import GroupCycle
from vmsnapd.groupplan import schedule_units
from vmsnapd.hvtypes import HypervisorError
from vmsnapd.logsetup import dry_run_prefix
from vmsnapd.parallel import ordered_map
from vmsnapd.policy import cycle_stamp, due_periods, schedule_zone
from vmsnapd.targets import Target, log_warnings_once, needs_hypervisor, plan_targets, read_backing

log = logging.getLogger(__name__)


def _targets(ctx: Context, survey: Survey) -> list[Target]:
    # Only a pass whose policies may name a domain loads the libvirt adapter (ctx.hypervisor, on first use).
    hypervisor = ctx.hypervisor if needs_hypervisor(survey.policies) else None
    return plan_targets(survey.policies, survey.listing, hypervisor)


def _stamp(ctx: Context, survey: Survey, now: datetime) -> datetime:
    taken = [s.name for s in survey.listing.snapshots]
    return cycle_stamp(now, ctx.config.daemon.utc, taken=taken)


def take_due(ctx: Context, survey: Survey | None = None) -> PassReport:
    now = ctx.now()
    survey = survey or ctx.survey()
    tz = schedule_zone(ctx.config.daemon.utc)
    stamp = _stamp(ctx, survey, now)
    work: list[tuple[Target, list[str]]] = []
    try:
        targets = _targets(ctx, survey)
    except HypervisorError as exc:
        # Without libvirt we cannot tell which datasets back a running VM: taking them as plain
        # snapshots would silently downgrade them to crash-consistent, so the pass fails instead.
        return PassReport(errors=[f"cannot plan cycles: {exc}"])
    for target in targets:
        if not target.policy.autosnap:
            continue
        periods = due_periods(target.policy, survey.listing.snapshots_of(target.name), now, tz)
        if periods or target.group:  # a group is due when one member is (schedule_units)
            work.append((target, periods))
    if not any(periods for _, periods in work):
        log.info("%snothing due", dry_run_prefix(ctx.dry_run))
    return PassReport(outcomes=run_cycles(ctx, survey, work, stamp))


def take_now(ctx: Context, survey: Survey, target_name: str, period: str) -> list[TargetOutcome] | None:
    """`vmsnapd snapshot TARGET --period P`: one cycle now for a dataset or a domain, whatever is due; for a member
    of a VM group, the whole group's cycle (one outcome per member)."""
    targets = _targets(ctx, survey)
    for target in targets:
        if target_name in (target.name, target.domain) or target_name in target.datasets:
            work = [(t, [period] if t is target else []) for t in targets if t is target or
                    (target.group and t.group == target.group)]
            return run_cycles(ctx, survey, work, _stamp(ctx, survey, ctx.now()))
    return None


def run_cycles(ctx: Context, survey: Survey, work: list[tuple[Target, list[str]]],
               stamp: datetime) -> list[TargetOutcome]:
    staging = ctx.config.daemon.ram_staging_dir
    hypervisor = ctx.hypervisor if any(t.domain for t, _ in work) else None
    read_backing([t for t, _ in work], hypervisor, survey.listing)  # only the targets a cycle runs for
    log_warnings_once([t for t, _ in work])
    env = CycleEnv(
        zfs=ctx.zfs,
        hypervisor=hypervisor,
        journal=ctx.journal,
        listing=survey.listing,
        overlay_dir=Path(ctx.config.daemon.overlay_dir),
        ram_store=ctx.ram_store if any(t.domain for t, _ in work) else None,
        ram_compression=ctx.config.daemon.ram_compression,
        hook_timeout=ctx.config.daemon.hook_timeout,
        dry_run=ctx.dry_run,
        staging=StagingArea(Path(staging), dry_run=ctx.dry_run) if staging else None,
    )
    units = schedule_units(work)
    cycles = [Cycle(env, *unit.members[0], stamp) for unit in units if not unit.group]
    plain = [c for c in cycles if not c.target.domain]
    vms: list[Cycle | GroupCycle] = [c for c in cycles if c.target.domain]
    vms += [GroupCycle(env, unit, stamp, ctx.config.daemon.group_timeout) for unit in units if unit.group]
    outcomes = ordered_map(lambda c: c.run(), plain, ctx.config.daemon.zfs_jobs, "take")  # datasets side by side
    if vms:
        outcomes += _run_vm_cycles(ctx, vms)
    warnings = {target.name: target.warnings for target, _ in work}
    for outcome in outcomes:  # what planning found (e.g. a backing file outside the datasets: vmsnapd.backing)
        outcome.warnings[:0] = warnings.get(outcome.target, [])
    return outcomes


def _run_vm_cycles(ctx: Context, vms: list[Cycle | GroupCycle]) -> list[TargetOutcome]:
    """The VM cycles, `max_parallel` at once, each on a hypervisor connection of its own (vmsnapd.connections:
    libvirtd serves few calls of one connection at once)."""
    outcomes: list[TargetOutcome] = []
    connections = Connections(ctx.hypervisor, ctx.open_hypervisor)
    try:
        with ThreadPoolExecutor(max_workers=ctx.config.daemon.max_parallel, thread_name_prefix="cycle") as pool:
            for result in pool.map(partial(_run, connections), vms):
                outcomes += result
    finally:
        connections.close()
    return outcomes


def _run(connections: Connections, unit: Cycle | GroupCycle) -> list[TargetOutcome]:
    members = unit.cycles if isinstance(unit, GroupCycle) else [unit]
    with ExitStack() as leases:
        for cycle in members:  # a group's members are held still at once: one connection each
            cycle.env = replace(cycle.env, hypervisor=leases.enter_context(connections.lease()))
        result = unit.run()
    return result if isinstance(result, list) else [result]
