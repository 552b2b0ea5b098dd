"""`vmsnapd restore --group NAME SNAPSHOT` (docs/groups.md): every member of a VM group back to one snapshot of the
group, so the application spread over them continues from one instant.

Verify first: every member's restore is planned (all the checks of a lone restore, read-only) before anything is
touched. Then each member's datasets are swapped in place as a lone restore does (its current state set aside, its
own record, so `restore --undo MEMBER` keeps working); when one member's swap fails, the members done before it
are taken back (the lone restore's roll-back: datasets put back, a VM that ran booted again). Last, the members
start as close together as possible: every RAM dump is prepared (decompressed) and loaded paused, then all are
resumed one right after the other; members without a dump boot after that.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack

from pydantic import BaseModel

from vmsnapd.actions.context import Context
from vmsnapd.actions.restore import (RestoreFailed, RestorePlan, RestoreRecord, clear_restore_leftovers,
                                     plan_restore, refuse_left_on_overlays, roll_back, swap_in_place, thaw_resumed)
from vmsnapd.hvtypes import HypervisorError
from vmsnapd.runner import CommandError
from vmsnapd.targets import Target, plan_targets

log = logging.getLogger(__name__)


class GroupRestorePlan(BaseModel):
    group: str
    snapshot: str
    plans: list[RestorePlan]  # one per member, in the order they are restored

    @property
    def domains(self) -> list[str]:
        return [p.domain for p in self.plans]


def group_of(targets: list[Target], name: str) -> str:
    """PURE: the group `name` names: a group's name, or any member (domain or dataset) of one."""
    if any(t.group == name for t in targets):
        return name
    for target in targets:
        if name in (target.domain, target.name, *target.datasets):
            if not target.group:
                raise RestoreFailed(f"{name} is in no VM group (restore it without --group)")
            return target.group
    raise RestoreFailed(f"{name} is neither a VM group nor a member of one")


def plan_group_restore(ctx: Context, name: str, snapshot: str, *, no_memory: bool,
                       force_stop: bool) -> GroupRestorePlan:
    """Plan every member's restore (each verified as a lone restore is); RestoreFailed when any is refused."""
    survey = ctx.survey()
    targets = plan_targets(survey.policies, survey.listing, ctx.hypervisor)
    group = group_of(targets, name)
    plans = []
    for member in [t for t in targets if t.group == group]:
        label = member.domain or member.name
        if member.domain:
            try:
                refuse_left_on_overlays(ctx, member.domain)
            except RestoreFailed as exc:
                raise RestoreFailed(f"group {group}: {exc}") from exc
        if member.error:
            raise RestoreFailed(f"group {group}: {label}: {member.error}; nothing was changed")
        try:
            plan = plan_restore(ctx, member.domain, snapshot, clone=None, no_memory=no_memory, force_stop=force_stop)
        except RestoreFailed as exc:
            raise RestoreFailed(f"group {group}: {label}: {exc}; nothing was changed") from exc
        if plan.define_xml is not None:
            raise RestoreFailed(f"group {group}: {label} is a backup host's copy: restore its members one by one")
        plan.notes = []  # the "restoring it alone" note: not alone here
        plans.append(plan)
    return GroupRestorePlan(group=group, snapshot=plans[0].snapshot, plans=plans)


def execute_group_restore(ctx: Context, gplan: GroupRestorePlan) -> list[str]:
    """Swap every member in place (taking the done ones back when one fails), then start them together."""
    done: list[str] = []
    swapped: list[RestoreRecord] = []
    for plan in gplan.plans:
        mine: list[str] = []
        try:
            record = swap_in_place(ctx, plan, mine)
        except RestoreFailed as exc:
            raise RestoreFailed(f"group {gplan.group}: {plan.domain}: {exc}; "
                                f"{_take_back(ctx, swapped)}") from exc
        done += mine
        swapped.append(record)
    try:
        _start_together(ctx, gplan, done)
    except (HypervisorError, OSError, CommandError, StopIteration) as exc:
        raise RestoreFailed(f"group {gplan.group}: {exc} — the datasets of every member are restored; done: "
                            f"{'; '.join(done)}") from exc
    return done


def _take_back(ctx: Context, swapped: list[RestoreRecord]) -> str:
    """The members already swapped go back to what they were (the lone restore's roll-back), last first."""
    if not swapped:
        return "no other member was changed"
    results = [roll_back(ctx, record, [], RestoreFailed(f"taking back {record.domain}"))
               for record in reversed(swapped)]
    return "the members done before were taken back: " + "; ".join(results)


def _start_together(ctx: Context, gplan: GroupRestorePlan, done: list[str]) -> None:
    """Load every member's RAM dump paused, then resume them one right after the other; boot the others."""
    hv = ctx.hypervisor
    from_memory = [p for p in gplan.plans if p.resume_from_memory]
    if from_memory:
        clear_restore_leftovers(ctx, done)  # before any member's image is made
    with ExitStack() as stack:
        files = {p.domain: stack.enter_context(ctx.ram_store.restore_source(_dump(ctx, p), ctx.state_dir / "restore"))
                 for p in from_memory}  # decompressed before any member is loaded
        loaded: list[str] = []
        for plan in from_memory:
            try:
                hv.restore_memory(str(files[plan.domain]), paused=True)
            except HypervisorError as exc:
                left = f"; {', '.join(loaded)} loaded and left paused (resume them once it runs)" if loaded else ""
                raise HypervisorError(f"{plan.domain} did not load its RAM dump: {exc}{left}") from exc
            loaded.append(plan.domain)
    first = time.monotonic()
    for plan in from_memory:
        hv.resume(plan.domain)
    if from_memory:
        spread = int((time.monotonic() - first) * 1000)
        done.append(f"resumed {', '.join(loaded)} from their RAM dumps together (within {spread} ms)")
    for plan in gplan.plans:
        if not plan.resume_from_memory:
            hv.start(plan.domain)
            done.append(f"booted {plan.domain} (no RAM dump for it)")
    for plan in from_memory:
        if plan.quiesced:
            thaw_resumed(hv, plan.domain, done)


def _dump(ctx: Context, plan: RestorePlan):
    return next(d for d in ctx.ram_store.dumps() if str(d.path) == plan.ram_dump)
