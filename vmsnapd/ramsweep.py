"""PURE: which RAM dumps a prune pass deletes, and why (docs/pruning.md, "The RAM dump rule").

The caller lists the dumps, the snapshots that still exist (after the pass's destroys, plus those a restore keeps
aside), the datasets that listing covered and each managed dataset's `ram_keep`; this module decides. Nothing
here touches the host.

- A dump is **judged** only when vmsnapd can see every dataset of its cycle: its manifest's datasets are all in the
  listing. A dump without a readable manifest (half-written by a crash) is judged, but deleted only when forced.
- A judged dump whose cycle has no snapshot left on any of its datasets is an **orphan**: it goes.
- `ram_keep` is a per-dataset setting, and a cycle may span datasets with different values. The rule is the most
  conservative one: a dump stays while **any** dataset of its cycle still wants it. A dataset wants a dump when
  its `ram_keep` is 0 (keep while a snapshot of the cycle exists), when it has no policy in this configuration
  (nothing says it may go), or when the dump is among the dataset's newest `ram_keep` cycles of that domain that
  still have a snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from vmsnapd.ramstore import RamDump


@dataclass(frozen=True)
class PlannedDeletion:
    dump: RamDump
    reason: str


@dataclass
class SweepPlan:
    deletions: list[PlannedDeletion] = field(default_factory=list)
    not_judged: list[RamDump] = field(default_factory=list)  # datasets not all in the listing: left alone


def is_judgeable(dump: RamDump, listed: set[str]) -> bool:
    """Whether vmsnapd can see the whole cycle of `dump`: every dataset of its manifest is in the listing."""
    return dump.manifest is None or set(dump.manifest.datasets) <= listed


def wanted_by_ram_keep(alive: Iterable[RamDump], ram_keep: Mapping[str, int]) -> set[str]:
    """Paths of the dumps some dataset still wants (module docstring): with `ram_keep = N` > 0 a dataset wants
    the newest N of its domain's dumps; with 0, or without a policy, every dump of its cycles."""
    alive = [d for d in alive if d.manifest is not None]
    wanted: set[str] = set()
    by_dataset: dict[tuple[str, str], list[RamDump]] = {}
    for dump in alive:
        for dataset in dump.manifest.datasets:
            by_dataset.setdefault((dump.domain, dataset), []).append(dump)
    for (_domain, dataset), dumps in by_dataset.items():
        keep = ram_keep.get(dataset, 0)
        # Stamps are YYYY-MM-DD_HH:MM:SS, so text order is time order.
        newest = sorted(dumps, key=lambda d: d.stamp, reverse=True)
        wanted.update(str(d.path) for d in (newest[:keep] if keep > 0 else newest))
    return wanted


def plan_ram_sweep(dumps: Iterable[RamDump], live: set[tuple[str, str]], listed: set[str],
                   ram_keep: Mapping[str, int], *, force: bool = False) -> SweepPlan:
    """The dumps to delete, each with its reason, and those not judged.

    `live`: (dataset, snapshot name) of every snapshot that still exists; `listed`: the datasets that listing
    covered; `ram_keep`: each managed dataset's `ram_keep` (a dataset missing here counts as 0).
    """
    plan = SweepPlan()
    alive: list[RamDump] = []
    for dump in dumps:
        if not is_judgeable(dump, listed):
            plan.not_judged.append(dump)
        elif dump.manifest is None:
            if force:
                plan.deletions.append(PlannedDeletion(dump, "no readable manifest (forced)"))
        elif not dump.manifest.snapshots() & live:
            plan.deletions.append(PlannedDeletion(dump, "orphan: no snapshot of its cycle is left"))
        else:
            alive.append(dump)
    wanted = wanted_by_ram_keep(alive, ram_keep)
    for dump in alive:
        if str(dump.path) not in wanted:
            keep = max(ram_keep[ds] for ds in dump.manifest.datasets)
            plan.deletions.append(PlannedDeletion(dump, f"ram_keep = {keep}: not among the newest {keep} cycles"))
    return plan
