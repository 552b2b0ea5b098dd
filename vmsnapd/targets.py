"""Which cycles a pass runs: managed datasets grouped by the VM whose disks they hold.

A dataset whose policy maps to a domain (SPEC `domain = "auto" | NAME | "none"`) becomes a VM target;
every managed dataset holding a writable disk of that domain joins the same target, so all of the
VM's disks are captured under one name while it is frozen. Every other dataset is a plain target.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from vmsnapd.config import DatasetPolicy
from vmsnapd.domxml import Disk
from vmsnapd.hvtypes import HypervisorError
from vmsnapd.ports import HypervisorPort
from vmsnapd.zfs import ZfsListing

log = logging.getLogger(__name__)


@dataclass
class Target:
    """One cycle's worth of work: a plain dataset, or a VM and every dataset holding its disks."""

    policy: DatasetPolicy  # the policy of the dataset that named the domain (or the plain dataset)
    datasets: list[str]
    domain: str | None = None
    disks: list[Disk] = field(default_factory=list)  # captured: writable disks on managed datasets
    skipped_disks: list[str] = field(default_factory=list)  # targets left out: read-only, shared, excluded
    error: str | None = None  # planning failed: the cycle must not run, the failure is reported

    @property
    def name(self) -> str:
        return self.policy.name


def wanted_domain(policy: DatasetPolicy, domains: set[str]) -> str | None:
    if policy.domain == "none":
        return None
    if policy.domain == "auto":
        leaf = policy.name.rsplit("/", 1)[-1]
        return leaf if leaf in domains else None
    return policy.domain


def dataset_of_path(path: str, listing: ZfsListing) -> str | None:
    """The dataset whose mountpoint holds `path` (the deepest one), or a zvol's dataset."""
    if path.startswith("/dev/zvol/"):
        name = path[len("/dev/zvol/"):]
        return name if name in listing.datasets else None
    resolved = str(Path(path).resolve()) if Path(path).exists() else path
    best: tuple[int, str] | None = None
    for info in listing.datasets.values():
        if not info.mountpoint:
            continue
        mp = info.mountpoint.rstrip("/")
        if (resolved == mp or resolved.startswith(mp + "/")) and (best is None or len(mp) > best[0]):
            best = (len(mp), info.name)
    return best[1] if best else None


def plan_targets(policies: dict[str, DatasetPolicy], listing: ZfsListing,
                 hypervisor: HypervisorPort | None) -> list[Target]:
    needs_libvirt = any(p.domain != "none" for p in policies.values())
    domains: set[str] = set()
    if needs_libvirt and hypervisor is not None:
        domains = set(hypervisor.domain_names())
    targets: list[Target] = []
    by_domain: dict[str, Target] = {}
    absorbed: set[str] = set()
    for name, policy in policies.items():
        domain = wanted_domain(policy, domains)
        if domain is None:
            continue
        absorbed.add(name)
        if domain in by_domain:  # a second dataset naming the same VM: one cycle captures both
            if name not in by_domain[domain].datasets:
                by_domain[domain].datasets.append(name)
            continue
        target = Target(policy=policy, datasets=[name], domain=domain)
        targets.append(target)
        by_domain[domain] = target
        if domain not in domains:
            target.error = f"domain {domain} (named by {policy.configured_by}) does not exist"
            continue
        try:
            disks = hypervisor.disks(domain)
        except HypervisorError as exc:
            target.error = str(exc)
            continue
        problems = []
        for disk in disks:
            if not disk.snapshottable or disk.target in policy.exclude_disks:
                target.skipped_disks.append(disk.target)
                continue
            dataset = dataset_of_path(disk.source, listing)
            if dataset is None or dataset not in policies:
                problems.append(f"disk {disk.target} ({disk.source}) is writable but on no managed dataset; "
                                f"manage its dataset or list it in exclude_disks")
                continue
            target.disks.append(disk)
            if dataset not in target.datasets:
                target.datasets.append(dataset)
                absorbed.add(dataset)
        if problems:
            target.error = "; ".join(problems)
    for name, policy in policies.items():
        if name not in absorbed:
            targets.append(Target(policy=policy, datasets=[name]))
    return targets
