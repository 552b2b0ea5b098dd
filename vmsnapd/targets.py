"""Which cycles a pass runs: managed datasets grouped by the VM whose disks they hold.

A dataset whose policy maps to a domain (SPEC `domain = "auto" | NAME | "none"`) becomes a VM target;
every managed dataset holding a writable disk of that domain joins the same target, so all of the
VM's disks are captured under one name while it is frozen. Every other dataset is a plain target.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from vmsnapd.backing import BackingFile, ChainFile, outside_backing, outside_warnings, unknown_chain_warning
from vmsnapd.config import DatasetPolicy
from vmsnapd.domxml import Disk
from vmsnapd.hvtypes import HypervisorError
from vmsnapd.logsetup import first_time
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
    skipped_disks: list[str] = field(default_factory=list)  # disk targets (vdb) left out: read-only, shared, excluded
    error: str | None = None  # planning failed: the cycle must not run, the failure is reported
    group: str = ""  # the VM group (docs/groups.md) its datasets name; "" when none
    backing: list[BackingFile] = field(default_factory=list)  # backing files of its disks outside its datasets
    unknown_chains: dict[str, str] = field(default_factory=dict)  # disk target → why its chain could not be read
    warnings: list[str] = field(default_factory=list)  # for every cycle's outcome (the cycle runs all the same)

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


@dataclass
class VmFacts:
    """What libvirt and the mountpoints say about one domain, gathered before the grouping."""

    disks: list[Disk] = field(default_factory=list)
    disk_datasets: dict[str, str | None] = field(default_factory=dict)  # disk source → the dataset holding it
    error: str | None = None  # libvirt could not list its disks


@dataclass
class TargetFacts:
    """Everything the grouping depends on besides the policies: which domains exist, and their disks."""

    domains: set[str] = field(default_factory=set)
    vms: dict[str, VmFacts] = field(default_factory=dict)  # only domains a policy names that exist


def plan_targets(policies: dict[str, DatasetPolicy], listing: ZfsListing,
                 hypervisor: HypervisorPort | None) -> list[Target]:
    """Look up what the grouping needs (libvirt, mountpoints), then group: see group_targets."""
    return group_targets(policies, gather_target_facts(policies, listing, hypervisor))


def needs_hypervisor(policies: dict[str, DatasetPolicy]) -> bool:
    """Whether grouping asks libvirt at all: only when some policy may name a domain."""
    return any(p.domain != "none" for p in policies.values())


def gather_target_facts(policies: dict[str, DatasetPolicy], listing: ZfsListing,
                        hypervisor: HypervisorPort | None) -> TargetFacts:
    """The domains (only when a policy may name one) and the disks of each domain a policy names.
    HypervisorError from listing the domains propagates; a domain whose disks cannot be read carries the error."""
    if hypervisor is None or not needs_hypervisor(policies):
        return TargetFacts()
    facts = TargetFacts(domains=set(hypervisor.domain_names()))
    for policy in policies.values():
        domain = wanted_domain(policy, facts.domains)
        if domain in facts.domains and domain not in facts.vms:
            facts.vms[domain] = _vm_facts(hypervisor, domain, listing)
    return facts


def _vm_facts(hypervisor: HypervisorPort, domain: str, listing: ZfsListing) -> VmFacts:
    try:
        disks = hypervisor.disks(domain)
    except HypervisorError as exc:
        return VmFacts(error=str(exc))
    return VmFacts(disks=disks, disk_datasets={d.source: dataset_of_path(d.source, listing) for d in disks
                                               if d.snapshottable})


def look_at(path: str, listing: ZfsListing) -> ChainFile:
    """A backing file as it is now: the dataset holding it, its size and modification time (None: not there)."""
    try:
        st = os.stat(path)
    except OSError:
        return ChainFile(path=path, dataset=dataset_of_path(path, listing))
    return ChainFile(path=path, dataset=dataset_of_path(path, listing), size=st.st_size, mtime_ns=st.st_mtime_ns)


def group_targets(policies: dict[str, DatasetPolicy], facts: TargetFacts) -> list[Target]:
    """PURE: the targets of a pass. A dataset whose policy names an existing or missing domain becomes (or joins)
    that VM's target; the datasets holding the VM's captured disks join it; every other dataset is a plain
    target. A VM target that cannot run carries the reason in `error`."""
    targets: list[Target] = []
    by_domain: dict[str, Target] = {}
    absorbed: set[str] = set()
    for name, policy in policies.items():
        domain = wanted_domain(policy, facts.domains)
        if domain is None:
            continue
        absorbed.add(name)
        if domain in by_domain:  # a second dataset naming the same VM: one cycle captures both
            if name not in by_domain[domain].datasets:
                by_domain[domain].datasets.append(name)
            continue
        target = _vm_target(name, policy, domain, facts, policies)
        targets.append(target)
        by_domain[domain] = target
        absorbed.update(target.datasets)
    targets += [Target(policy=policy, datasets=[name]) for name, policy in policies.items() if name not in absorbed]
    for target in targets:
        _set_group(target, policies)
    _refuse_shared_datasets(targets)
    return targets


def read_backing(targets: list[Target], hypervisor: HypervisorPort | None, listing: ZfsListing) -> None:
    """Each VM target's backing files outside its datasets, and a warning per disk concerned (vmsnapd.backing); a
    chain that could not be read is a warning too (not knowing stops no cycle). One qemu-img per captured disk that
    is a file and not raw, so only for the targets that need it — the cycles about to run, `status`, a restore —
    never for every target of every pass."""
    if hypervisor is None:
        return
    for target in targets:
        chains: dict[str, list[ChainFile]] = {}
        errors: dict[str, str] = {}
        for disk in target.disks:
            if disk.kind == "file" and disk.driver_type != "raw":  # raw has no backing file
                try:
                    chains[disk.source] = [look_at(path, listing) for path in hypervisor.backing_chain(disk.source)]
                except HypervisorError as exc:
                    errors[disk.source] = str(exc)
        _note_backing(target, chains, errors)


def _note_backing(target: Target, chains: dict[str, list[ChainFile]], errors: dict[str, str]) -> None:
    target.backing = outside_backing([(d.target, d.source) for d in target.disks], chains, target.datasets)
    target.unknown_chains = {d.target: errors[d.source] for d in target.disks if d.source in errors}
    target.warnings = (outside_warnings(target.domain, target.backing)
                       + [unknown_chain_warning(target.domain, disk, error)
                          for disk, error in target.unknown_chains.items()])


@dataclass
class DatasetBacking:
    """What `status` and `check` say of one dataset: the outside backing files of the VM's disks it holds, and the
    warnings about the disks whose chain could not be read."""

    files: list[BackingFile] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def backing_by_dataset(targets: list[Target], listing: ZfsListing) -> dict[str, DatasetBacking]:
    """Per dataset holding a disk concerned: its outside backing files, and its disks whose chain is unknown."""
    found: dict[str, DatasetBacking] = {}
    for target in targets:
        holder = {d.target: dataset_of_path(d.source, listing) or target.datasets[0] for d in target.disks}
        for disk in dict.fromkeys([f.disk for f in target.backing] + list(target.unknown_chains)):
            entry = found.setdefault(holder.get(disk, target.datasets[0]), DatasetBacking())
            entry.files += [f for f in target.backing if f.disk == disk]
            if disk in target.unknown_chains:
                entry.unknown.append(unknown_chain_warning(target.domain, disk, target.unknown_chains[disk]))
    return found


def log_warnings_once(targets: list[Target]) -> None:
    """Log each target's warnings once per domain and process (a daemon would repeat them every pass; the
    outcome of every cycle and `vmsnapd check` keep saying them)."""
    for target in targets:
        for warning in target.warnings:
            if first_time(("target warning", target.domain or target.name, warning)):
                log.warning("%s: %s", target.domain or target.name, warning)


def _set_group(target: Target, policies: dict[str, DatasetPolicy]) -> None:
    """The target's group: the one its datasets name. Two different groups, or a group on a dataset without a
    VM, is an error of the target (its group then fails as a whole: docs/groups.md)."""
    groups = sorted({policies[ds].group for ds in target.datasets if ds in policies} - {""})
    if not groups:
        return
    target.group = groups[0]
    if len(groups) > 1:
        target.error = f"the datasets of {target.domain or target.name} name different groups: {', '.join(groups)}"
    elif target.domain is None and target.error is None:
        target.error = (f"{target.name} is in group {groups[0]} but maps to no domain (domain = "
                        f"\"{target.policy.domain}\"): a group holds VMs still together")


def _refuse_shared_datasets(targets: list[Target]) -> None:
    """A dataset holding disks of two VMs cannot be snapshotted at each VM's own instant: the second cycle would
    find the snapshot taken at the first VM's instant and pair its RAM dump with it, and restoring one VM would
    roll back the other's disk. Both VMs' cycles fail, saying so, before anything is touched."""
    holders: dict[str, list[Target]] = {}
    for target in targets:
        if target.domain is not None:
            for dataset in target.datasets:
                holders.setdefault(dataset, []).append(target)
    for dataset, sharing in holders.items():
        if len(sharing) < 2:
            continue
        names = ", ".join(sorted(t.domain for t in sharing))
        for target in sharing:
            problem = (f"dataset {dataset} holds disks of several VMs ({names}): one snapshot of it cannot be each "
                       "VM's own instant; give each VM's disks a dataset of their own")
            target.error = f"{target.error}; {problem}" if target.error else problem


def _vm_target(name: str, policy: DatasetPolicy, domain: str, facts: TargetFacts,
               policies: dict[str, DatasetPolicy]) -> Target:
    target = Target(policy=policy, datasets=[name], domain=domain)
    if domain not in facts.domains:
        target.error = f"domain {domain} (named by {policy.configured_by}) does not exist"
        return target
    vm = facts.vms[domain]
    if vm.error is not None:
        target.error = vm.error
        return target
    problems = []
    for disk in vm.disks:
        if not disk.snapshottable or disk.target in policy.exclude_disks:
            target.skipped_disks.append(disk.target)
            continue
        dataset = vm.disk_datasets.get(disk.source)
        if dataset is None or dataset not in policies:
            problems.append(f"disk {disk.target} ({disk.source}) is writable but on no managed dataset; "
                            f"manage its dataset or list it in exclude_disks")
            continue
        target.disks.append(disk)
        if dataset not in target.datasets:
            target.datasets.append(dataset)
    if problems:
        target.error = "; ".join(problems)
    return target
