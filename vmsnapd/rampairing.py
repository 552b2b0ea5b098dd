"""PURE: which RAM dump is the RAM of a snapshot — the one rule of `restore` (resumes from it), `list` /
`list --json` (say the restore point has RAM) and `status` (count a VM's dumps), so they cannot disagree.

A dump is found by its VM's domain and the time stamp of the snapshot's name (`RamStore.find`), and is that
snapshot's RAM only when its manifest names the snapshot (`pairing_problem`): a cycle leaves out of its manifest
every name it found taken, so the short name decides, and the datasets are not compared — after a VM's dataset
was renamed its dumps stay paired with its snapshots. Which VM a dataset belongs to is what restore finds
(`vm_domains`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from vmsnapd.config import DatasetPolicy
from vmsnapd.models import Snapshot
from vmsnapd.names import parse_snapname
from vmsnapd.ramstore import RamDump
from vmsnapd.targets import Target


def pairing_problem(dump: RamDump, snapshot: str) -> str | None:
    """Why `dump` (found by the domain and time stamp in its file name) is not the RAM of `snapshot`, or None when
    its manifest names that snapshot. A cycle leaves out of its manifest every name it found taken (on any of its
    datasets), so the short name decides; the datasets are not compared, so a dump stays paired with its snapshots
    after the VM's dataset was renamed. A dump without a readable manifest is judged by restore's check_dump."""
    manifest = dump.manifest
    if manifest is None:
        return None
    if manifest.stamp != dump.stamp or manifest.domain != dump.domain:
        return (f"RAM dump {dump.path} carries the manifest of another cycle ({manifest.domain} at "
                f"{manifest.stamp})")
    if snapshot not in manifest.snapshot_names:
        return (f"the manifest of RAM dump {dump.path} does not name {snapshot}: its cycle did not take that "
                "snapshot (a name taken at another instant, e.g. by another tool in the same second)")
    return None


def vm_domains(policies: Mapping[str, DatasetPolicy], targets: list[Target] | None) -> dict[str, str]:
    """dataset → the VM domain restore takes it for: the domain of its target (plan_targets: a VM and every dataset
    holding its disks), else the domain its policy names (a backup host, where it is not defined). `targets` None
    (libvirt did not answer): a `domain = "auto"` dataset is taken for the domain named like its last component."""
    found = {name: policy.domain for name, policy in policies.items() if policy.domain not in ("auto", "none")}
    if targets is None:
        found.update({name: name.rsplit("/", 1)[-1] for name, policy in policies.items() if policy.domain == "auto"})
    for target in targets or []:
        if target.domain:
            found.update(dict.fromkeys(target.datasets, target.domain))
    return found


def paired_dumps(dumps: Iterable[RamDump], domains: Mapping[str, str],
                 snapshots: Iterable[Snapshot]) -> dict[tuple[str, str], RamDump]:
    """(dataset, snapshot name) → the RAM dump a restore resumes that snapshot from (module docstring); snapshots
    without one are left out. A dump without a readable manifest is no snapshot's RAM (restore refuses it)."""
    by_cycle: dict[tuple[str, str], RamDump] = {}
    for dump in dumps:
        by_cycle.setdefault((dump.domain, dump.stamp), dump)  # as RamStore.find: the first of that cycle
    paired = {}
    for snap in snapshots:
        parsed, domain = parse_snapname(snap.name), domains.get(snap.dataset)
        dump = by_cycle.get((domain, parsed.stamp)) if parsed and domain else None
        if dump is not None and dump.manifest is not None and pairing_problem(dump, snap.name) is None:
            paired[(snap.dataset, snap.name)] = dump
    return paired
