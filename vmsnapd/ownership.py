"""What is vmsnapd's to touch: pure rules over facts gathered elsewhere (no libvirt, no file system access).

Recovery commits, pivots and deletes ONLY what these functions call vmsnapd's; everything else it meets
is reported and left alone. The rules (docs/operations.md, "What vmsnapd will never touch"):

- An overlay is vmsnapd's when a journal record lists it (and its qcow2 header still names the base the
  record names), or when ALL of these hold: its file name has vmsnapd's pattern (vmsnapd/overlaynames.py)
  for exactly this domain and disk target; it lies directly in overlay_dir; the domain is managed (some
  dataset's policy maps to it); its backing file is a disk on a managed dataset (not another overlay).
- A libvirt snapshot record (metadata) is vmsnapd's when its domain is managed and either its name has
  vmsnapd's pattern or every file it names is one of vmsnapd's overlays (or RAM files).
- The three folders vmsnapd writes (overlay_dir, ram_dir, state_dir) must not be `/`, equal, nested in
  one another (ram_dir inside state_dir excepted, the documented default), inside or around a managed
  dataset's mountpoint, or hold a disk of any defined domain or a libvirt storage pool.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from vmsnapd.overlaynames import (is_file_of, is_libvirt_snapshot_name, parse_memory_file_name,
                                  parse_overlay_file_name)

# state_dir's own entry that must never be shared with ram_dir (journal records live there).
JOURNAL_SUBDIR = "cycles"


# -- paths ------------------------------------------------------------------------------------------------

def norm(path: str) -> str:
    """Lexically normalised; POSIX keeps a leading `//` apart, Linux does not: one `/` here."""
    if not path:
        return path
    path = os.path.normpath(path)
    return "/" + path.lstrip("/") if path.startswith("//") else path


def inside(path: str, folder: str) -> bool:
    """`path` is `folder` itself or below it (lexically, after normalisation)."""
    path, folder = norm(path), norm(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def directly_in(path: str, folder: str) -> bool:
    return os.path.dirname(norm(path)) == norm(folder)


# -- overlays -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ownership:
    """What makes something vmsnapd's on this host: overlay_dir (and ram_staging_dir, where fresh RAM files may be
    written too) and the managed domains."""

    overlay_dir: str
    managed_domains: frozenset[str] = frozenset()
    staging_dir: str = ""  # empty: no staging folder

    def holds_fresh_files(self, path: str) -> bool:
        """`path` lies in overlay_dir or the staging folder (lexically)."""
        return inside(path, self.overlay_dir) or bool(self.staging_dir) and inside(path, self.staging_dir)


@dataclass(frozen=True)
class OverlayFile:
    """Facts about one candidate overlay file."""

    backing: str | None = None  # backing file from the qcow2 header (resolved); None: none, unreadable, missing
    backing_dataset: str | None = None  # the MANAGED dataset holding `backing`; None: on no managed dataset
    journal_base: str | None = None  # base_path of a journal record listing this file for this domain/target


@dataclass(frozen=True)
class Verdict:
    ours: bool
    reason: str


def judge_overlay(domain: str, target: str, path: str, facts: OverlayFile | None, owner: Ownership) -> Verdict:
    """Whether disk `target` of `domain` running on (or defined on) `path` is on one of vmsnapd's overlays."""
    facts = facts or OverlayFile()
    if facts.journal_base is not None:
        if facts.backing is None:
            return Verdict(False, "listed in the journal, but its backing file cannot be read")
        if norm(facts.backing) != norm(facts.journal_base):
            return Verdict(False, f"listed in the journal with base {facts.journal_base}, but its backing file is "
                                  f"{facts.backing}")
        return Verdict(True, "listed in the journal")
    parsed = parse_overlay_file_name(os.path.basename(path))
    if parsed is None or not directly_in(path, owner.overlay_dir):
        return Verdict(False, "its name is not one vmsnapd gives its overlays in overlay_dir")
    if (parsed.domain, parsed.target) != (domain, target):
        return Verdict(False, f"its name belongs to domain {parsed.domain} disk {parsed.target}")
    if domain not in owner.managed_domains:
        return Verdict(False, f"domain {domain} is not managed by this configuration")
    if facts.backing is None:
        return Verdict(False, "it has no readable backing file")
    if inside(facts.backing, owner.overlay_dir):
        return Verdict(False, f"its backing file {facts.backing} is in overlay_dir, not a base disk")
    if facts.backing_dataset is None:
        return Verdict(False, f"its backing file {facts.backing} is on no managed dataset")
    return Verdict(True, f"vmsnapd's overlay of {facts.backing} on {facts.backing_dataset}")


# -- recovery plan of one domain -------------------------------------------------------------------------------

class StepKind(StrEnum):
    COMMIT_LIVE = "commit-live"  # running/paused on our overlay: blockcommit + pivot, then delete the overlay
    COMMIT_OFFLINE = "commit-offline"  # shut off, defined on our overlay: qemu-img commit, redefine on base, delete
    REPOINT = "repoint"  # running on base, persistent definition still on our overlay: redefine on base, delete
    DROP_METADATA = "drop-metadata"  # libvirt snapshot record that is ours


@dataclass(frozen=True)
class Step:
    kind: StepKind
    target: str = ""
    overlay: str = ""
    base: str = ""
    snapshot: str = ""


@dataclass(frozen=True)
class SnapshotRecord:
    """A libvirt snapshot record (metadata) of a domain and the files it names."""

    name: str
    disks: tuple[tuple[str, str], ...] = ()  # (disk target, file)
    memory: str | None = None


@dataclass(frozen=True)
class DomainFacts:
    name: str
    active: bool  # running or paused: QEMU uses the live definition
    live: tuple[tuple[str, str], ...] = ()  # (target, source) of the live definition
    persistent: tuple[tuple[str, str], ...] = ()  # (target, source) of the persistent definition
    files: Mapping[str, OverlayFile] = field(default_factory=dict)  # facts per candidate overlay path
    snapshots: tuple[SnapshotRecord, ...] = ()


@dataclass
class RecoveryPlan:
    steps: list[Step] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def overlays(self) -> list[str]:
        return [s.overlay for s in self.steps if s.overlay]


def is_candidate(path: str, facts: DomainFacts, owner: Ownership) -> bool:
    """A source recovery looks at: in overlay_dir, or listed by a journal record."""
    listed = facts.files.get(path)
    return bool(path) and (inside(path, owner.overlay_dir) or (listed is not None and listed.journal_base is not None))


def _judge(facts: DomainFacts, owner: Ownership, target: str, path: str) -> Verdict:
    return judge_overlay(facts.name, target, path, facts.files.get(path), owner)


def _left_alone(facts: DomainFacts, target: str, path: str, verdict: Verdict, where: str) -> str:
    return f"{facts.name} disk {target} {where} {path}, which is not vmsnapd's ({verdict.reason}): left alone"


def plan_domain(facts: DomainFacts, owner: Ownership) -> RecoveryPlan:
    """What recovery does to one domain: only steps on vmsnapd's overlays and records; a warning for the rest."""
    plan = RecoveryPlan()
    if facts.active:
        _plan_commits(facts, owner, plan, facts.live, StepKind.COMMIT_LIVE, "runs on")
        _plan_active_definition(facts, owner, plan)
    else:
        _plan_commits(facts, owner, plan, facts.persistent, StepKind.COMMIT_OFFLINE, "is defined on")
    _plan_metadata(facts, owner, plan)
    return plan


def _plan_commits(facts: DomainFacts, owner: Ownership, plan: RecoveryPlan, sources: Sequence[tuple[str, str]],
                  kind: StepKind, where: str) -> None:
    """A commit of every disk source that is vmsnapd's overlay; a warning for each candidate that is not."""
    for target, path in sources:
        if not is_candidate(path, facts, owner):
            continue
        verdict = _judge(facts, owner, target, path)
        if verdict.ours:
            plan.steps.append(Step(kind, target, path, facts.files[path].backing or ""))
        else:
            plan.warnings.append(_left_alone(facts, target, path, verdict, where))


def _plan_active_definition(facts: DomainFacts, owner: Ownership, plan: RecoveryPlan) -> None:
    """A running domain whose persistent definition (next boot) still names one of vmsnapd's overlays."""
    live = dict(facts.live)
    for target, path in facts.persistent:
        if live.get(target) == path or not is_candidate(path, facts, owner):
            continue  # the same overlay as the running disk: the live commit takes the definition along
        verdict = _judge(facts, owner, target, path)
        if not verdict.ours:
            plan.warnings.append(_left_alone(facts, target, path, verdict, "is defined (next boot) on"))
            continue
        base = facts.files[path].backing or ""
        if norm(live.get(target, "")) != norm(base):
            plan.warnings.append(f"{facts.name} disk {target} is defined (next boot) on vmsnapd's overlay {path}, "
                                 f"but runs on {live.get(target) or 'nothing'}, not on its base {base}: left alone")
            continue
        plan.steps.append(Step(StepKind.REPOINT, target, path, base))


def _record_is_ours(record: SnapshotRecord, facts: DomainFacts, owner: Ownership) -> bool:
    if is_libvirt_snapshot_name(record.name):
        return True
    if not record.disks and not record.memory:
        return False
    if record.memory is not None:
        memory = parse_memory_file_name(os.path.basename(record.memory))
        if memory is None or memory.domain != facts.name or not (
                directly_in(record.memory, owner.overlay_dir)
                or owner.staging_dir and directly_in(record.memory, owner.staging_dir)):
            return False
    return all(_judge(facts, owner, target, path).ours for target, path in record.disks)


def _plan_metadata(facts: DomainFacts, owner: Ownership, plan: RecoveryPlan) -> None:
    for record in facts.snapshots:
        if facts.name in owner.managed_domains and _record_is_ours(record, facts, owner):
            plan.steps.append(Step(StepKind.DROP_METADATA, snapshot=record.name))
            continue
        named = [p for _t, p in record.disks] + ([record.memory] if record.memory else [])
        if any(owner.holds_fresh_files(p) for p in named):  # an admin's own snapshots elsewhere: not our business
            plan.warnings.append(f"libvirt snapshot {record.name} of {facts.name} names files in vmsnapd's "
                                 "overlay_dir or ram_staging_dir but is not vmsnapd's: left alone")


def foreign_domain_warnings(name: str, sources: Sequence[tuple[str, str]], owner: Ownership) -> list[str]:
    """A domain recovery does not manage: every disk of it in overlay_dir is reported, none is touched."""
    return [f"{name} disk {target} uses {path} in overlay_dir, but {name} is not managed by this configuration: "
            "left alone" for target, path in dict.fromkeys(sources) if inside(path, owner.overlay_dir)]


@dataclass(frozen=True)
class OthersOverlay:
    """A disk running on the overlay an external libvirt snapshot not of vmsnapd's made."""

    target: str
    path: str
    snapshot: str  # the libvirt snapshot record that names it

    def merge_hint(self, domain: str) -> str:
        return f"virsh blockcommit {domain} {self.target} --active --pivot"

    def __str__(self) -> str:
        return f"{self.target}: {self.path} (libvirt snapshot {self.snapshot})"


def others_overlays(sources: Sequence[tuple[str, str]], records: Sequence[SnapshotRecord],
                    overlay_dir: str) -> list[OthersOverlay]:
    """The disks whose source is the overlay an external libvirt snapshot not of vmsnapd's made — typically an old
    pre-snapshot script whose post-script never committed it back. Only reported: vmsnapd snapshots such a disk as
    it is and never merges what it did not make."""
    made = {norm(path): record.name for record in records if not is_libvirt_snapshot_name(record.name)
            for _target, path in record.disks}
    return [OthersOverlay(target, path, made[norm(path)]) for target, path in sources
            if norm(path) in made and not inside(path, overlay_dir)]


def deletable_leftover(path: str, domain: str | None, overlay_dir: str, staging_dir: str = "") -> bool:
    """A file a journal record of `domain`'s cycle names (overlay or fresh RAM file): deleted only when it lies
    directly in overlay_dir and its name is one vmsnapd gives such files for that domain, or directly in the
    staging folder and named as that domain's fresh RAM file, so a damaged or forged record can never make root
    delete anything else. Pure: looks at the text only."""
    if not domain or not isinstance(path, str) or "\x00" in path or not os.path.isabs(path):
        return False
    if os.path.normpath(path) != path:
        return False
    name, folder = os.path.basename(path), os.path.dirname(path)
    if folder == norm(overlay_dir):
        return is_file_of(name, domain)
    memory = parse_memory_file_name(name)
    return bool(staging_dir) and folder == norm(staging_dir) and memory is not None and memory.domain == domain


# -- the folders vmsnapd writes ----------------------------------------------------------------------------------

FOLDER_KEYS = ("overlay_dir", "ram_dir", "state_dir", "ram_staging_dir")


def folder_nesting_problems(folders: Mapping[str, str]) -> list[tuple[str, str]]:
    """Pure rules on the folders alone: (key, reason) pairs. `/`, equal, nested (ram_dir inside state_dir
    is allowed, as long as it is not state_dir's journal folder: the documented default /var/lib/vmsnapd/ram)."""
    problems: list[tuple[str, str]] = []
    roots = {key for key, path in folders.items() if norm(path) == "/"}
    problems += [(key, "must not be / (vmsnapd would treat the whole host as its folder)")
                 for key in FOLDER_KEYS if key in roots]
    keys = [k for k in FOLDER_KEYS if k in folders and k not in roots]
    for i, key in enumerate(keys):
        for other in keys[i + 1:]:
            reason = _nesting(key, norm(folders[key]), other, norm(folders[other]))
            if reason:
                problems.append((key, reason))
    return problems


def _nesting(key: str, path: str, other: str, other_path: str) -> str | None:
    if path == other_path:
        return f"must not be the same folder as {other} ({path})"
    if {key, other} == {"ram_dir", "state_dir"}:
        ram, state = (path, other_path) if key == "ram_dir" else (other_path, path)
        if inside(state, ram):
            return "state_dir must not be inside ram_dir"
        if inside(ram, os.path.join(state, JOURNAL_SUBDIR)):
            return f"ram_dir must not be inside state_dir's journal folder {os.path.join(state, JOURNAL_SUBDIR)}"
        return None  # ram_dir below state_dir: the documented default (/var/lib/vmsnapd/ram)
    if inside(path, other_path):
        return f"must not be inside {other} ({other_path})"
    if inside(other_path, path):
        return f"must not contain {other} ({other_path})"
    return None


@dataclass(frozen=True)
class HostFolders:
    """What the host-aware folder check looks at."""

    folders: Mapping[str, str]  # key -> resolved path
    managed_mountpoints: Mapping[str, str] = field(default_factory=dict)  # managed dataset -> mountpoint
    folder_datasets: Mapping[str, str | None] = field(default_factory=dict)  # key -> managed dataset holding it
    domain_disks: Mapping[str, Sequence[tuple[str, str]]] = field(default_factory=dict)  # domain -> (target, path)
    pool_paths: Mapping[str, str] = field(default_factory=dict)  # libvirt storage pool -> target path


def host_folder_problems(host: HostFolders) -> list[str]:
    """Every reason one of the folders is unsafe on this host (one line each, naming folder and cause)."""
    problems = [f"daemon.{key} = {host.folders[key]}: {reason}"
                for key, reason in folder_nesting_problems(host.folders)]
    for key, folder in host.folders.items():
        where = f"daemon.{key} = {folder}"
        dataset = host.folder_datasets.get(key)
        if dataset:
            problems.append(f"{where}: is inside managed dataset {dataset} (mounted at "
                            f"{host.managed_mountpoints.get(dataset, '?')}); its snapshots and rollbacks would "
                            "take vmsnapd's own files along")
        for name, mountpoint in sorted(host.managed_mountpoints.items()):
            if inside(mountpoint, folder) and norm(mountpoint) != norm(folder):
                problems.append(f"{where}: contains managed dataset {name} (mounted at {mountpoint})")
        problems += _disks_in(key, where, folder, host.domain_disks)
        for pool, path in sorted(host.pool_paths.items()):
            if path and (inside(path, folder) or inside(folder, path)):
                relation = "is inside" if inside(folder, path) and norm(folder) != norm(path) else "contains"
                problems.append(f"{where}: {relation} the path of libvirt storage pool {pool} ({path})")
    return problems


def _disks_in(key: str, where: str, folder: str, domain_disks: Mapping[str, Sequence[tuple[str, str]]]) -> list[str]:
    problems = []
    for name, disks in sorted(domain_disks.items()):
        for target, path in dict.fromkeys(disks):
            if not path or not inside(path, folder):
                continue
            parsed = parse_overlay_file_name(os.path.basename(path))
            if key == "overlay_dir" and directly_in(path, folder) and parsed is not None \
                    and (parsed.domain, parsed.target) == (name, target):
                continue  # vmsnapd's own overlay of a cycle in progress (or left for recovery)
            problems.append(f"{where}: holds disk {target or '?'} of domain {name} ({path}); "
                            "vmsnapd's folders must never hold VM disks")
    return problems
