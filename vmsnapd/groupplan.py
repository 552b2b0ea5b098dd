"""VM groups, the pure part (docs/groups.md): which targets a pass runs as one group, with which periods and
method, and what each member is told when the group's step does not happen. No libvirt, no I/O, no clock:
vmsnapd/groupcycle.py carries the decisions out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from vmsnapd.names import PERIODS
from vmsnapd.targets import Target

# The way a group member is held still: the pause way (libvirt manual snapshot with the RAM, or a plain suspend),
# which leaves the guest paused until the whole group is snapshotted. The overlay way resumes the guest right
# after its overlays are made, so its instant could not be shared with the other members.
GROUP_METHOD = "pause"


@dataclass
class Unit:
    """One unit of scheduling: a lone target, or every member of a group (all with the same periods)."""

    members: list[tuple[Target, list[str]]]
    group: str = ""  # "" for a lone target
    notes: list[str] = field(default_factory=list)  # said once in the log when the unit runs


def schedule_units(work: Iterable[tuple[Target, Sequence[str]]]) -> list[Unit]:
    """`work`: targets with their due periods (a group member may come with none). A lone target with periods
    is a unit; the members of one group form one unit whose periods are the union of theirs (in PERIODS
    order), when that union is not empty. Order: as the first member appears in `work`."""
    units: list[Unit] = []
    groups: dict[str, Unit] = {}
    for target, periods in work:
        if not target.group:
            if periods:
                units.append(Unit(members=[(target, list(periods))]))
            continue
        unit = groups.get(target.group)
        if unit is None:
            unit = groups[target.group] = Unit(members=[], group=target.group)
            units.append(unit)
        unit.members.append((target, list(periods)))
    for unit in groups.values():
        _share_periods(unit)
    return [u for u in units if u.members and u.members[0][1]]


def _share_periods(unit: Unit) -> None:
    wanted = {p for _, periods in unit.members for p in periods}
    shared = [p for p in PERIODS if p in wanted]
    unit.members = [(held_as_group(target, unit.notes), list(shared)) for target, _ in unit.members]


def held_as_group(target: Target, notes: list[str]) -> Target:
    """The target as its group's cycle runs it: method "pause" (noted in `notes` when its policy said
    "overlay")."""
    if target.policy.method == GROUP_METHOD:
        return target
    notes.append(f"group {target.group}: {target.domain or target.name} is held with method \"pause\" instead of "
                 f"\"{target.policy.method}\": the overlay method resumes a guest before the group is snapshotted")
    return replace(target, policy=target.policy.model_copy(update={"method": GROUP_METHOD}))


def member_failed(group: str, member: str, reason: str) -> str:
    """What every member of a group whose step did not happen reports, when `member` failed before it."""
    return f"group {group}: no snapshot, member {member} failed: {reason}"


def timed_out(group: str, waiting_for: Sequence[str], phase: str, seconds: float) -> str:
    """What the members report when the group timed out waiting for some members to be `phase` ("ready" to be held
    still, or "held still")."""
    late = ", ".join(waiting_for) or "a member"
    return f"group {group}: no snapshot, timed out after {seconds:g} s waiting for {late} to be {phase}"


def group_report(groups: dict[str, list[tuple[str, str]]]) -> list[str]:
    """`config check`'s lines: per group, its members (table, method) and the method override."""
    lines = []
    for group, members in sorted(groups.items()):
        names = ", ".join(table for table, _ in members)
        lines.append(f"group {group}: {names} (held still together, one snapshot step)")
        lines += [f"group {group}: {table} has method \"{method}\"; its group's cycles hold it with method "
                  f"\"{GROUP_METHOD}\" (docs/groups.md)" for table, method in members if method != GROUP_METHOD]
    return lines
