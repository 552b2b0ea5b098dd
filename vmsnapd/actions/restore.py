"""`vmsnapd restore TARGET SNAPSHOT`: bring a VM back to a restore point in one command — verify, then act.

Everything that can be checked is checked before the VM is stopped or any dataset changes (`gather_facts`,
then the pure `decide`): the snapshot exists on every dataset of the VM; the RAM dump of its cycle has a
readable manifest whose domain XML parses, its checksum matches and, for zstd, the whole frame decodes
(`zstd -t`); there is room for the decompressed image; no earlier restore of the VM is still kept aside;
the names the replaced datasets will take are free. Any failure there: nothing was touched.

In place (default): the VM must be off, or is stopped hard with `--force-stop`. Nothing is destroyed: each
dataset of the VM (parents before children) is renamed aside to `<dataset>.vmsnapd-replaced-<stamp>` (with its
snapshots), the chosen snapshot of the cycle is cloned back under the original name (same mountpoint, so the
disk paths stay valid) and promoted, so the restored dataset owns the snapshots up to the restore point and the
set-aside one keeps the state the restore replaced and every newer snapshot. Child datasets move back under
the restored dataset. A record in `state_dir/restore-asides.json` (written atomically before the first change)
says what was set aside: `restore --undo` puts it back exactly, `restore --drop-aside` destroys it, `status`
lists it. A failing step undoes the datasets already swapped and boots the VM again if it was running. Then
the guest resumes from the cycle's RAM dump (decompressed to a temporary file when needed, file systems
thawed when the cycle froze them), or boots when there is no dump or `--no-memory`.

`--clone NAME`: the datasets are cloned instead (`<parent>/<NAME>` for the VM's first dataset,
`<parent>/<NAME>-<leaf>` for the others), a new domain NAME is defined from the XML saved in the
snapshot's manifest (or the current one) with a new UUID, fresh MAC addresses and its disks on the
clones, and booted. The original VM and its datasets are not touched. A clone always boots: a RAM
state carries the original's identity (MAC, disks) and cannot be resumed under another.

Nothing happens without `--yes`: the plan is printed instead (the checks run all the same).
"""

from __future__ import annotations

import logging
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from vmsnapd.actions.context import Context
from vmsnapd.asides import (
    ASIDE_RECORDS,
    AsideEntry,
    RestoreFailed,
    RestoreRecord,
    Verb,
    ZfsStep,
    load_records,
    save_records,
)
from vmsnapd.backing import (BACKING_PROPERTY, BackingFile, ChainFile, judge_restore, parse_backing_property,
                             unknown_chain_warning)
from vmsnapd.clonexml import clone_domain_xml
from vmsnapd.domxml import disks_below, parse_disks
from vmsnapd.hvtypes import PAUSED, RUNNING, SHUTOFF, HypervisorError
from vmsnapd.ports import HypervisorPort, ZfsPort
from vmsnapd.names import (
    ASIDE_MARK,
    InvalidName,
    aside_name,
    parse_snapname,
    validate_dataset_name,
    validate_domain_name,
    validate_snapshot_name,
)
from vmsnapd.rampairing import paired_dumps, pairing_problem, vm_domains
from vmsnapd.ramstore import RamDump, RamStore
from vmsnapd.runner import CommandError
from vmsnapd.targets import Target, look_at, plan_targets, read_backing
from vmsnapd.zfs import ZFS_FUSE, DatasetBusy, DatasetNotFound, ZfsError, ZfsListing

log = logging.getLogger(__name__)

# How long a restore keeps asking a resumed guest's agent to thaw file systems the dump was taken frozen with.
THAW_WAIT_S = 20.0

SPACE_MARGIN_BYTES = 64 * 2**20  # kept free beyond the decompressed image


# -- undoing what is set aside (pure; the record and its steps are in vmsnapd/asides.py) ----------------------


@dataclass(frozen=True)
class UndoFacts:
    """The live state of one entry's two datasets, read just before putting it back."""

    dataset_exists: bool
    aside_exists: bool
    dataset_origin: str | None = None
    aside_origin: str | None = None
    dataset_children: tuple[str, ...] = ()  # leaf names of the child filesystems of `dataset` now
    dataset_snapshots: tuple[str, ...] = ()  # in the order taken
    # The dataset went aside inside a parent entry's dataset (the restore stopped during the parent's swap): the
    # parent's put-back brings it home.
    moved_with_parent: bool = False


def undo_steps(entry: AsideEntry, facts: UndoFacts) -> list[ZfsStep]:
    """The steps that put `entry`'s replaced dataset back, whatever point its restore reached (it may have
    been interrupted). Refuses (RestoreFailed) to destroy anything that is not provably the restore's clone."""
    if not facts.aside_exists:
        if facts.dataset_exists or facts.moved_with_parent:
            return []  # never set aside, or already put back (or the parent's put-back does it)
        raise RestoreFailed(f"neither {entry.dataset} nor {entry.aside} exists: nothing to put back")
    steps: list[ZfsStep] = []
    if facts.dataset_exists:
        steps += _discard_clone_steps(entry, facts)
    steps.append(ZfsStep(verb=Verb.RENAME, dataset=entry.aside, arg=entry.dataset))
    if entry.aside_mountpoint and entry.mountpoint_local:
        steps.append(ZfsStep(verb=Verb.SET_MOUNTPOINT, dataset=entry.dataset, arg=entry.mountpoint_local))
    return steps


def _discard_clone_steps(entry: AsideEntry, facts: UndoFacts) -> list[ZfsStep]:
    steps: list[ZfsStep] = []
    after: tuple[str, ...] = facts.dataset_snapshots  # what stays on the clone once the aside is promoted back
    if facts.dataset_origin == f"{entry.aside}@{entry.snapshot}":
        pass  # cloned, not yet promoted: the clone holds only snapshots taken since
    elif facts.aside_origin == f"{entry.dataset}@{entry.snapshot}" and entry.snapshot in after:
        steps.append(ZfsStep(verb=Verb.PROMOTE, dataset=entry.aside))
        after = after[after.index(entry.snapshot) + 1:]
    else:
        raise RestoreFailed(f"{entry.dataset} is not the clone of {entry.aside}@{entry.snapshot} this restore "
                            "made; left alone")
    foreign = [n for n in after if parse_snapname(n) is None]
    if foreign:
        raise RestoreFailed(f"{entry.dataset} has snapshots vmsnapd did not take since the restore "
                            f"({', '.join(foreign)}): destroy or move them first; nothing was changed")
    extra = sorted(set(facts.dataset_children) - set(entry.children))
    if extra:
        raise RestoreFailed(f"{entry.dataset} has child datasets the restore did not find there "
                            f"({', '.join(extra)}): move them first; nothing was changed")
    steps += [ZfsStep(verb=Verb.RENAME, dataset=f"{entry.dataset}/{c}", arg=f"{entry.aside}/{c}")
              for c in entry.children if c in facts.dataset_children]
    steps.append(ZfsStep(verb=Verb.DESTROY_TREE, dataset=entry.dataset))
    return steps


def aside_mountpoint(mountpoint_local: str | None, stamp: str) -> str | None:
    """Where a replaced dataset with a mountpoint of its own is mounted while aside (beside the original)."""
    if not mountpoint_local or not mountpoint_local.startswith("/"):
        return None  # inherited (follows the new name), or none/legacy (not mounted by ZFS)
    return f"{mountpoint_local.rstrip('/')}{ASIDE_MARK}{stamp}"


# -- facts and the plan ------------------------------------------------------------------------------------


class DumpCheck(BaseModel):
    """What verifying the cycle's RAM dump found (the checks that read it run before any plan is made)."""

    path: str
    problem: str | None = None  # None: checksum, decompression and saved XML all fine
    compressed: bool = False
    raw_size: int = 0
    quiesced: bool = False
    # The snapshot names its cycle took, as its manifest says (empty: no readable manifest).
    names: list[str] = Field(default_factory=list)
    # Why this dump is not the RAM of the snapshot asked for (None: its manifest names that snapshot): found by the
    # time stamp in its file name alone, it may hold another instant than a snapshot sharing that stamp.
    not_paired: str | None = None


@dataclass
class RestoreFacts:
    """Everything the plan depends on, gathered read-only."""

    domain: str
    datasets: list[str]
    vm_state: str
    snapshots: dict[str, list[str]]  # dataset → snapshot names in the order taken
    existing: set[str]  # every filesystem listed
    mounted: set[str] = field(default_factory=set)  # the filesystems mounted now
    mountpoint_local: dict[str, str | None] = field(default_factory=dict)
    dump: DumpCheck | None = None
    free_bytes: int | None = None  # where a compressed dump is decompressed (counting the leftovers, deleted first)
    leftovers: list[str] = field(default_factory=list)  # decompressed images interrupted restores left there
    aside_kept: bool = False  # an earlier in-place restore of this VM is still kept aside
    domain_exists: dict[str, bool] = field(default_factory=dict)  # clone name → exists
    group: str = ""  # its VM group (docs/groups.md)
    group_others: list[str] = field(default_factory=list)  # the group's other members (domains)
    # Backing files outside the datasets the restored disks read (vmsnapd.backing): recorded in the dump's manifest
    # (with size and modification time) and in the current disks' chains; what is at those paths now.
    backing: list[BackingFile] = field(default_factory=list)
    backing_now: dict[str, ChainFile] = field(default_factory=dict)
    backing_unknown: list[str] = field(default_factory=list)  # chains that could not be read


class RestorePlan(BaseModel):
    domain: str
    datasets: list[str]
    snapshot: str
    newer_snapshots_kept_aside: list[str] = Field(default_factory=list)
    ram_dump: str | None = None
    resume_from_memory: bool = False
    quiesced: bool = False
    clone: str | None = None
    clone_datasets: dict[str, str] = Field(default_factory=dict)  # source dataset → clone dataset
    rollback_to: dict[str, str] = Field(default_factory=dict)  # dataset → snapshot (the cycle's last)
    entries: list[AsideEntry] = Field(default_factory=list)  # in-place: what is set aside, parents first
    stop_first: bool = False
    verified: list[str] = Field(default_factory=list)
    steps: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)  # e.g. the other members of its VM group (docs/groups.md)
    warnings: list[str] = Field(default_factory=list)  # e.g. a backing file outside the datasets changed since
    define_xml: str | None = None  # a backup host: the domain is defined from this saved XML (backup_restore.py)


def plan_restore(ctx: Context, target_name: str, snapshot: str, *, clone: str | None, no_memory: bool,
                 force_stop: bool) -> RestorePlan:
    """Gather the facts (read-only, including the dump's checksum) and decide. Raises RestoreFailed."""
    snapshot = snapshot.split("@", 1)[1] if "@" in snapshot else snapshot
    validate_snapshot_name(snapshot)
    if clone:
        validate_domain_name(clone)
    from vmsnapd.actions.backup_restore import backup_domain, plan_backup_restore

    if (backup := backup_domain(ctx, target_name)) is not None:  # not defined here: received datasets and dump
        return plan_backup_restore(ctx, backup[0], snapshot, clone=clone, no_memory=no_memory)
    facts = gather_facts(ctx, target_name, snapshot, clone=clone, use_memory=not no_memory and not clone)
    plan = decide(facts, snapshot, clone=clone, no_memory=no_memory, force_stop=force_stop,
                  stamp=ctx.now().strftime("%Y%m%dT%H%M%S"))
    for warning in plan.warnings:
        log.warning("restore of %s to %s: %s", facts.domain, snapshot, warning)
    if facts.group and not clone:
        others = ", ".join(facts.group_others) or "no other member now"
        plan.notes.append(f"{facts.domain} is in group {facts.group} with {others}: restoring {facts.domain} alone "
                          f"brings it back to a different instant than them; `vmsnapd restore --group "
                          f"{facts.group} {snapshot}` restores them together")
    return plan


def decide(facts: RestoreFacts, snapshot: str, *, clone: str | None, no_memory: bool, force_stop: bool,
           stamp: str) -> RestorePlan:
    """The restore plan, a pure function of the facts: refuses (RestoreFailed) before anything is touched."""
    missing = [ds for ds in facts.datasets if snapshot not in facts.snapshots.get(ds, [])]
    if missing:
        raise RestoreFailed(f"snapshot {snapshot} does not exist on {', '.join(missing)}")
    plan = RestorePlan(domain=facts.domain, datasets=list(facts.datasets), snapshot=snapshot, clone=clone)
    plan.verified.append(f"{snapshot} exists on {', '.join(facts.datasets)}")
    _decide_backing(facts, plan)
    if clone:
        return _decide_clone(facts, plan, clone)
    _decide_memory(facts, plan, no_memory)
    _decide_vm_state(facts, plan, force_stop)
    if facts.aside_kept:
        raise RestoreFailed(f"an earlier restore of {facts.domain} is still kept aside: put it back with "
                            f"`vmsnapd restore --undo {facts.domain} --yes` or drop it with "
                            f"`vmsnapd restore --drop-aside {facts.domain} --yes` first")
    for ds in sorted(facts.datasets):  # parents before children: a parent's swap moves its children
        plan.entries.append(_decide_dataset(facts, plan, ds, snapshot, stamp))
    for entry in plan.entries:
        plan.steps += [step.text() for step in entry.forward_steps()]
    if plan.resume_from_memory:
        plan.steps += [f"delete {p} (a decompressed RAM image an interrupted restore left)" for p in facts.leftovers]
        plan.steps.append(f"resume {facts.domain} from RAM dump {plan.ram_dump}")
    else:
        why = "--no-memory" if no_memory and plan.ram_dump else "no RAM dump for this snapshot"
        plan.steps.append(f"boot {facts.domain} ({why})")
    return plan


def _decide_backing(facts: RestoreFacts, plan: RestorePlan) -> None:
    """A restored disk reading a backing file outside the datasets: refused when the file is missing, a loud
    warning when it changed since the snapshot (docs/operations.md, "Disks on a backing file outside the datasets")."""
    verdict = judge_restore(facts.backing, facts.backing_now)
    if verdict.missing:
        raise RestoreFailed("; ".join(verdict.missing) + "; nothing was changed")
    plan.verified += verdict.verified
    plan.warnings += verdict.changed + facts.backing_unknown


def _decide_clone(facts: RestoreFacts, plan: RestorePlan, clone: str) -> RestorePlan:
    dump = facts.dump if facts.dump is not None and facts.dump.not_paired is None else None
    if dump is not None and dump.problem and "XML" in dump.problem:
        raise RestoreFailed(dump.problem)
    parent = facts.datasets[0].rsplit("/", 1)[0]
    for i, ds in enumerate(facts.datasets):
        leaf = clone if i == 0 else f"{clone}-{ds.rsplit('/', 1)[-1]}"
        try:  # checked before the first clone is made: a name refused later left that one behind
            plan.clone_datasets[ds] = validate_dataset_name(f"{parent}/{leaf}")
        except InvalidName as exc:
            raise RestoreFailed(f"--clone {clone}: the clone of {ds} would be named {parent}/{leaf}, which ZFS "
                                f"refuses ({exc}); choose a shorter or plainer NAME; nothing was changed") from exc
    taken = [c for c in plan.clone_datasets.values() if c in facts.existing]
    if taken or facts.domain_exists.get(clone):
        raise RestoreFailed(f"clone target exists already: {', '.join(taken) or 'domain ' + clone}")
    if dump is not None:
        plan.ram_dump = dump.path  # for its saved domain XML only: a clone boots
    plan.steps += [f"clone {ds}@{plan.snapshot} as {c}" for ds, c in plan.clone_datasets.items()]
    plan.steps.append(f"define domain {clone} (new UUID and MACs, disks on the clones) and boot it")
    return plan


def _decide_memory(facts: RestoreFacts, plan: RestorePlan, no_memory: bool) -> None:
    if facts.dump is None or no_memory:
        return
    dump = facts.dump
    if dump.not_paired:
        plan.warnings.append(f"{dump.not_paired}: {facts.domain} is not resumed from it but boots from the disks of "
                             f"{plan.snapshot}")
        return
    if dump.problem:
        raise RestoreFailed(f"{dump.problem}; nothing was changed (restore with --no-memory to boot from the "
                            "disks instead)")
    if dump.compressed and facts.free_bytes is not None and facts.free_bytes < dump.raw_size + SPACE_MARGIN_BYTES:
        raise RestoreFailed(f"not enough space to decompress RAM dump {dump.path}: {dump.raw_size >> 20} MiB "
                            f"(+{SPACE_MARGIN_BYTES >> 20} MiB margin) needed, {facts.free_bytes >> 20} MiB free; "
                            "nothing was changed")
    plan.ram_dump = dump.path
    plan.resume_from_memory = True
    plan.quiesced = dump.quiesced
    plan.verified.append(f"RAM dump {dump.path}: checksum" + (", full decompression test and space to "
                                                              "decompress it" if dump.compressed else "")
                         + ", saved domain XML")


def _decide_vm_state(facts: RestoreFacts, plan: RestorePlan, force_stop: bool) -> None:
    if facts.vm_state in (RUNNING, PAUSED):
        if not force_stop:
            raise RestoreFailed(f"{facts.domain} is {facts.vm_state}: shut it down first, or pass --force-stop "
                                "(its current disks are kept aside, its RAM state is lost)")
        plan.stop_first = True
        plan.steps.append(f"stop {facts.domain} hard (it is {facts.vm_state})")
    elif facts.vm_state != SHUTOFF:
        raise RestoreFailed(f"{facts.domain} is {facts.vm_state}; cannot restore it now")


def _decide_dataset(facts: RestoreFacts, plan: RestorePlan, ds: str, snapshot: str, stamp: str) -> AsideEntry:
    if "/" not in ds:
        raise RestoreFailed(f"{ds} is a pool's root dataset: it cannot be set aside; restore with --clone")
    names = facts.snapshots[ds]
    # Every snapshot of one cycle holds the same disks: clone the cycle's last one, so the cycle's other
    # periods (e.g. the daily beside the hourly) come along with the promotion.
    cycle = cycle_names(facts.dump, snapshot, names)
    last = max(i for i, n in enumerate(names) if n in cycle)
    plan.rollback_to[ds] = names[last]
    plan.newer_snapshots_kept_aside += [f"{ds}@{n}" for n in names[last + 1:]]
    aside = aside_name(ds, stamp)
    local = facts.mountpoint_local.get(ds)
    entry = AsideEntry(dataset=ds, aside=aside, snapshot=names[last], mountpoint_local=local,
                       aside_mountpoint=aside_mountpoint(local, stamp),
                       children=sorted(c[len(ds) + 1:] for c in facts.existing
                                       if c.startswith(ds + "/") and "/" not in c[len(ds) + 1:]),
                       mounted=sorted(n for n in facts.mounted if n == ds or n.startswith(ds + "/")))
    if aside in facts.existing:
        raise RestoreFailed(f"{aside} exists already; try again in a second")
    return entry


def refuse_left_on_overlays(ctx: Context, domain: str) -> None:
    """RestoreFailed when an interrupted cycle left disks of `domain` on an overlay (a file in overlay_dir named by its
    live or persistent definition): its writes since the freeze are there, not in the dataset. Restoring the VM then
    would keep aside a disk without them, and `recover` would afterwards commit that overlay into the restored disk
    (it backs onto the same path) or delete it. (The plain "disk on no managed dataset" refusal this met before said
    to list the disk in exclude_disks — and with that a restore went on.) An overlay no definition names holds
    nothing the base lacks (committed, or never used): it is recover's to delete and blocks no restore."""
    hv = ctx.hypervisor
    try:
        disks = hv.disks(domain) + parse_disks(hv.xml(domain, inactive=True))
    except HypervisorError:
        return  # not there, or unreadable: the target's own error says so
    left = {f"{d.target}: {d.source}" for d in disks_below(disks, str(Path(ctx.config.daemon.overlay_dir).resolve()))}
    if left:
        raise RestoreFailed(f"{domain} still has disks on overlays of a cycle that did not finish "
                            f"({', '.join(sorted(left))}): its newest writes are there, not in its datasets. Run "
                            "`vmsnapd recover` first (it commits them back), then restore; nothing was changed")


def cycle_names(dump: DumpCheck | None, snapshot: str, names: list[str]) -> set[str]:
    """The snapshots among `names` that hold the same disks as `snapshot`: the names its cycle's manifest lists; a
    name only sharing the time stamp may have been taken at another instant (by another tool in the same second, or
    by hand later: the cycle leaves such a name out of its manifest). Without a manifest nothing says otherwise:
    the names with the same stamp."""
    if dump is not None and dump.names:
        return set(dump.names) if dump.not_paired is None else {snapshot}
    parsed = parse_snapname(snapshot)
    return {snapshot} | {n for n in names if parsed and (p := parse_snapname(n)) and p.stamp == parsed.stamp}


def _find_target(targets: list[Target], name: str) -> Target:
    for target in targets:
        if target.domain and name in (target.domain, target.name, *target.datasets):
            return target
    raise RestoreFailed(f"{name} is not a managed VM (a domain, or a dataset whose policy maps to one)")


def gather_facts(ctx: Context, target_name: str, snapshot: str, *, clone: str | None,
                 use_memory: bool) -> RestoreFacts:
    survey = ctx.survey()
    targets = plan_targets(survey.policies, survey.listing, ctx.hypervisor)
    target = _find_target(targets, target_name)
    refuse_left_on_overlays(ctx, target.domain)
    if target.error:
        raise RestoreFailed(target.error)
    read_backing([target], ctx.hypervisor, survey.listing)
    listing = survey.listing
    facts = RestoreFacts(domain=target.domain, datasets=list(target.datasets), vm_state="",
                         snapshots={ds: [s.name for s in listing.snapshots_of(ds)] for ds in target.datasets},
                         existing=set(listing.datasets),
                         mounted={n for n, info in listing.datasets.items() if info.mountpoint}, group=target.group,
                         group_others=[t.domain or t.name for t in targets if target.group and t is not target
                                       and t.group == target.group])
    if clone:
        facts.domain_exists[clone] = ctx.hypervisor.exists(clone)
    else:
        facts.vm_state = ctx.hypervisor.state(target.domain)
        facts.aside_kept = target.domain in load_records(ctx.state_dir).records
        for ds in target.datasets:
            value, source = ctx.zfs.property_source(ds, "mountpoint")
            facts.mountpoint_local[ds] = value if source == "local" else None
    parsed = parse_snapname(snapshot)
    dump = ctx.ram_store.find(target.domain, parsed.stamp) if parsed else None
    if dump is not None:
        not_paired = pairing_problem(dump, snapshot)
        facts.dump = check_dump(ctx.ram_store, dump, full=use_memory and not_paired is None)
        facts.dump.not_paired = not_paired
        if facts.dump.compressed and use_memory:
            facts.free_bytes = room_to_decompress(ctx, facts.leftovers)
    first = target.datasets[0]
    paired = dump if facts.dump is not None and facts.dump.not_paired is None else None
    _gather_backing(ctx.zfs, facts, target, paired, f"{first}@{snapshot}" if snapshot in facts.snapshots[first] else "",
                    listing)
    return facts


def _gather_backing(zfs: ZfsPort, facts: RestoreFacts, target: Target, dump: RamDump | None, snapshot: str,
                    listing: ZfsListing) -> None:
    """The outside backing files the restored disks read: as the cycle recorded them (the dump's manifest, else
    the snapshot's BACKING_PROPERTY), and those of the current disks' chains not recorded (without identity:
    present is all that can be checked)."""
    facts.backing_unknown = [unknown_chain_warning(target.domain, disk, error)
                             for disk, error in target.unknown_chains.items()]
    if dump is not None and dump.manifest is not None:
        recorded = list(dump.manifest.backing)
    else:  # a snapshot that is not there is refused by decide()
        recorded = _recorded_on(zfs, snapshot, facts.backing_unknown) if snapshot else []
    known = {f.path for f in recorded}
    facts.backing = recorded + [f.model_copy(update={"size": None, "mtime_ns": None}) for f in target.backing
                                if f.path not in known]
    facts.backing_now = {f.path: look_at(f.path, listing) for f in facts.backing}


def _recorded_on(zfs: ZfsPort, snapshot: str, warnings: list[str]) -> list[BackingFile]:
    """The backing files the cycle recorded on `snapshot` (none: not recorded — taken before vmsnapd recorded them,
    by another tool, or of a VM without any); a record that cannot be read is a warning, not a refusal."""
    try:
        value, source = zfs.property_source(snapshot, BACKING_PROPERTY)
        if source not in ("local", "received"):  # unset, or inherited from a dataset: not a cycle's record
            return []
        return parse_backing_property(value) or []
    except (ZfsError, ValueError) as exc:
        warnings.append(f"the backing files recorded on {snapshot} cannot be read ({exc}): a restore can check only "
                        "that they are there")
        return []


def check_dump(store: RamStore, dump: RamDump, *, full: bool) -> DumpCheck:
    """Read-only checks of a RAM dump: manifest, saved domain XML and (when `full`) checksum and, for zstd,
    a decompression of the whole frame."""
    check = DumpCheck(path=str(dump.path), compressed=dump.compressed)
    if dump.manifest is None:
        check.problem = f"RAM dump {dump.path} has no readable manifest"
        return check
    check.raw_size, check.quiesced = dump.manifest.raw_size, dump.manifest.quiesced
    check.names = list(dump.manifest.snapshot_names)
    try:
        ET.fromstring(dump.manifest.domain_xml)
    except ET.ParseError as exc:
        check.problem = f"the domain XML saved with RAM dump {dump.path} does not parse: {exc}"
        return check
    if not full:
        return check
    if not store.verify(dump):
        check.problem = f"RAM dump {dump.path} fails its checksum (damaged)"
    elif dump.compressed:
        try:
            store.runner.run([store.zstd_bin, "-q", "-t", "--", str(dump.path)], timeout=store.zstd_timeout_s)
        except CommandError as exc:
            check.problem = f"RAM dump {dump.path} does not decompress: {exc}"
    return check


def room_to_decompress(ctx: Context, leftovers: list[str]) -> int | None:
    """Free bytes for a decompressed RAM image in `state_dir/restore`, counting the images interrupted restores left
    there (their paths are added to `leftovers`): the restore deletes them before it decompresses."""
    work_dir = ctx.state_dir / "restore"
    found = ctx.ram_store.restore_leftovers(work_dir)
    leftovers += [str(p) for p in found]
    free = free_bytes(work_dir)
    return None if free is None else free + sum(p.stat().st_size for p in found)


def clear_restore_leftovers(ctx: Context, done: list[str]) -> None:
    """Delete the decompressed images restores killed mid-way left in `state_dir/restore` (under the pass lock: no
    restore is using one). A file that cannot be deleted is said, and the restore goes on."""
    for path in ctx.ram_store.restore_leftovers(ctx.state_dir / "restore"):
        try:
            path.unlink()
            done.append(f"deleted {path}, a decompressed RAM image an interrupted restore left")
        except OSError as exc:
            log.warning("could not delete %s, left by an interrupted restore: %s", path, exc)


def free_bytes(directory: Path) -> int | None:
    """Free bytes (as root sees them) on the file system that will hold `directory` (its nearest existing
    ancestor when it does not exist yet); None when that cannot be read."""
    path = directory
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


# -- the record of what is kept aside ----------------------------------------------------------------------


def _update_record(state_dir: Path, record: RestoreRecord | None, domain: str) -> None:
    records = load_records(state_dir)
    if record is None:
        records.records.pop(domain, None)
    else:
        records.records[domain] = record
    save_records(state_dir, records)


# -- carrying it out ---------------------------------------------------------------------------------------


def run_step(ctx: Context, step: ZfsStep) -> None:
    """One zfs verb; the thin execution layer under the pure planners."""
    zfs = ctx.zfs
    if step.verb is Verb.RENAME:
        _unmounted(ctx, step.dataset, lambda: zfs.rename(step.dataset, step.arg), step.arg)
    elif step.verb is Verb.SET_MOUNTPOINT:
        _unmounted(ctx, step.dataset, lambda: zfs.set_property(step.dataset, "mountpoint", step.arg))
    elif step.verb is Verb.CLONE:
        source, snap = step.arg.split("@", 1)
        zfs.clone(source, snap, step.dataset, {"mountpoint": step.mountpoint} if step.mountpoint else None)
    elif step.verb is Verb.PROMOTE:
        zfs.promote(step.dataset)
    else:
        _destroy_tree(ctx, step.dataset)
    log.info("restore: %s", step.text())


def _destroy_tree(ctx: Context, dataset: str) -> None:
    """Destroy a tree this restore provably made or set aside (the caller checked its origin and children).
    Busy for good (zfs-fuse, after QEMU was killed with a disk open there): `-f`, the known way out."""
    try:
        _unmounted(ctx, dataset, lambda: ctx.zfs.destroy_dataset(dataset, recursive=True), remount=False)
    except DatasetBusy as exc:
        log.warning("%s stays busy (%s); destroying it with -f", dataset, exc)
        ctx.zfs.destroy_dataset(dataset, recursive=True, force=True)


def _unmounted(ctx: Context, dataset: str, change, renamed_to: str | None = None, remount: bool = True) -> None:
    """Run `change` with `dataset` and its descendants unmounted (deepest first), then mount again what was
    mounted (under the new name after a rename). OpenZFS does the same inside `zfs rename`; zfs-fuse's own
    remount fails with "dataset is busy" once files were used there, e.g. the disk QEMU just closed."""
    listing = ctx.zfs.list_tree([dataset])
    mounted = sorted((n for n, info in listing.datasets.items() if info.mountpoint), key=lambda n: n.count("/"))
    try:
        for name in reversed(mounted):
            ctx.zfs.unmount(name)
        change()
    except ZfsError:
        for name in mounted:  # failed: mount back what was mounted, under the old names; the error says the rest
            try:
                ctx.zfs.mount(name)
            except ZfsError as exc:
                log.error("could not mount %s again: %s", name, exc)
        raise
    if remount:
        for name in mounted:
            ctx.zfs.mount(renamed_to + name[len(dataset):] if renamed_to else name)


def execute_restore(ctx: Context, plan: RestorePlan) -> list[str]:
    """Carry the plan out; returns what was done. Raises RestoreFailed saying exactly where things stand."""
    if plan.clone:
        return _restore_clone(ctx, plan, [])
    if plan.define_xml is not None:
        from vmsnapd.actions.backup_restore import execute_backup_restore

        return execute_backup_restore(ctx, plan)
    done: list[str] = []
    swap_in_place(ctx, plan, done)
    try:
        start_restored(ctx, plan, done)
    except (HypervisorError, OSError, CommandError) as exc:
        raise RestoreFailed(f"{exc} — the datasets are restored but {plan.domain} did not start; done: "
                            f"{'; '.join(done)}") from exc
    return done


def swap_in_place(ctx: Context, plan: RestorePlan, done: list[str]) -> RestoreRecord:
    """The in-place part of a restore: record, stop, set the current datasets aside and put the snapshot's in
    their place; the domain is not started. A failure is rolled back here (RestoreFailed says how far)."""
    record = RestoreRecord(domain=plan.domain, snapshot=plan.snapshot, at=ctx.now(), was_running=plan.stop_first,
                           entries=plan.entries)
    _update_record(ctx.state_dir, record, plan.domain)  # durable before the first change
    try:
        if plan.stop_first:
            ctx.hypervisor.destroy(plan.domain)
            done.append(f"stopped {plan.domain}")
        _swap_datasets(ctx, plan, done)
    except (ZfsError, HypervisorError, OSError) as exc:
        raise RestoreFailed(roll_back(ctx, record, done, exc)) from exc
    except KeyboardInterrupt as exc:
        # Ctrl-C half-way through the swap: undone like a failing step (a second Ctrl-C stops that too; the record
        # then stays for `restore --undo`), never left half-swapped with the VM off.
        raise RestoreFailed(roll_back(ctx, record, done, RestoreFailed("interrupted (Ctrl-C)"))) from exc
    record.complete = True
    _update_record(ctx.state_dir, record, plan.domain)
    done.append(f"kept aside: {', '.join(e.aside for e in plan.entries)} "
                f"(`vmsnapd restore --undo {plan.domain} --yes` puts them back)")
    return record


def _swap_datasets(ctx: Context, plan: RestorePlan, done: list[str]) -> None:
    for entry in plan.entries:
        for step in entry.forward_steps():
            run_step(ctx, step)
        done.append(f"restored {entry.dataset} from {entry.snapshot}; the replaced one is {entry.aside}")


def roll_back(ctx: Context, record: RestoreRecord, done: list[str], exc: Exception) -> str:
    """A step failed: put back the datasets already swapped, boot the VM if it ran. Returns the message."""
    try:
        put_back = _put_back(ctx, record)
        _update_record(ctx.state_dir, None, record.domain)
        outcome = "nothing was changed" if not put_back else f"undone: {'; '.join(put_back)}"
        if record.was_running and ctx.hypervisor.state(record.domain) == SHUTOFF:
            ctx.hypervisor.start(record.domain)
            outcome += f"; {record.domain} booted again from its own disks (its RAM state was lost by the stop)"
        return f"{exc} — {outcome}"
    except (ZfsError, HypervisorError, OSError, RestoreFailed) as undo_exc:
        return (f"{exc} — then putting things back failed too: {undo_exc}; done before: {'; '.join(done)}; "
                f"the record in {ctx.state_dir / ASIDE_RECORDS} is kept: `vmsnapd restore --undo "
                f"{record.domain} --yes` retries")


def start_restored(ctx: Context, plan: RestorePlan, done: list[str], *, dump: RamDump | None = None,
                   domain_xml: str | None = None) -> None:
    """Boot the restored domain, or resume it from the plan's RAM dump (`dump` when the caller has it already;
    `domain_xml` instead of the definition saved in the dump, e.g. with its disks moved), then thaw."""
    hv = ctx.hypervisor
    if not plan.resume_from_memory:
        hv.start(plan.domain)
        done.append(f"booted {plan.domain}")
        return
    clear_restore_leftovers(ctx, done)
    dump = dump or next(d for d in ctx.ram_store.dumps() if str(d.path) == plan.ram_dump)
    with ctx.ram_store.restore_source(dump, ctx.state_dir / "restore") as memory_file:
        hv.restore_memory(str(memory_file), domain_xml)
    done.append(f"resumed {plan.domain} from {dump.path}")
    if plan.quiesced:
        thaw_resumed(hv, plan.domain, done)


def thaw_resumed(hv: HypervisorPort, domain: str, done: list[str]) -> None:
    """The RAM was captured with the guest's file systems frozen by the agent: thaw them. Right after the resume
    the agent's channel may not be connected yet ("QEMU guest agent is not connected", seen on the lab): retry
    for a bounded time rather than leave the guest frozen."""
    deadline = time.monotonic() + THAW_WAIT_S
    while True:
        try:
            hv.fs_thaw(domain)
            done.append(f"thawed the file systems of {domain}")
            return
        except HypervisorError as exc:
            if time.monotonic() >= deadline:
                done.append(f"could not thaw {domain} ({exc}); run `virsh domfsthaw {domain}`")
                return
            time.sleep(0.5)


# -- undo and drop -----------------------------------------------------------------------------------------


class AsidePlan(BaseModel):
    """`--undo` (put the kept-aside state back) or `--drop-aside` (destroy it)."""

    domain: str
    record: RestoreRecord
    stop_first: bool = False
    steps: list[str] = Field(default_factory=list)


def _find_record(ctx: Context, target_name: str) -> RestoreRecord:
    records = load_records(ctx.state_dir).records
    for domain, record in records.items():
        if target_name == domain or any(target_name in (e.dataset, e.aside) for e in record.entries):
            return record
    raise RestoreFailed(f"no in-place restore of {target_name} is kept aside (nothing to undo or drop)")


def plan_undo(ctx: Context, target_name: str) -> AsidePlan:
    record = _find_record(ctx, target_name)
    plan = AsidePlan(domain=record.domain, record=record)
    vm_state = ctx.hypervisor.state(record.domain)
    if vm_state in (RUNNING, PAUSED):
        plan.stop_first = True
        plan.steps.append(f"stop {record.domain} hard (it is {vm_state}; what it did since the restore is discarded)")
    elif vm_state != SHUTOFF:
        raise RestoreFailed(f"{record.domain} is {vm_state}; cannot undo its restore now")
    put_back: set[str] = set()
    for entry in reversed(record.entries):  # children before parents
        facts = undo_facts(ctx, entry, record.entries)
        # A child entry's set-aside dataset below this one is renamed back by the child's own steps, planned
        # just before (and run before: _put_back reads the facts afresh): it will not be there any more.
        facts = replace(facts, dataset_children=tuple(
            c for c in facts.dataset_children if f"{entry.dataset}/{c}" not in put_back))
        plan.steps += [step.text() for step in undo_steps(entry, facts)]
        put_back.add(entry.aside)
    if record.was_running:
        plan.steps.append(f"boot {record.domain} (it was running before the restore)")
    return plan


def undo_facts(ctx: Context, entry: AsideEntry, entries: list[AsideEntry] | None = None) -> UndoFacts:
    """`entries`: the whole record's, to find this dataset inside a parent entry that went aside."""
    moved = [e.aside + entry.dataset[len(e.dataset):] for e in entries or []
             if entry.dataset.startswith(e.dataset + "/")]
    listing = ctx.zfs.list_tree([entry.dataset, entry.aside, *moved])
    ds_exists, aside_exists = entry.dataset in listing.datasets, entry.aside in listing.datasets
    return UndoFacts(
        dataset_exists=ds_exists, aside_exists=aside_exists,
        dataset_origin=_origin(ctx, entry.dataset) if ds_exists else None,
        aside_origin=_origin(ctx, entry.aside) if aside_exists else None,
        dataset_children=tuple(_children(listing, entry.dataset)),
        dataset_snapshots=tuple(s.name for s in listing.snapshots_of(entry.dataset)),
        moved_with_parent=any(m in listing.datasets for m in moved),
    )


def _origin(ctx: Context, dataset: str) -> str | None:
    value = ctx.zfs.get_property(dataset, "origin")
    return None if value in ("", "-") else value


def _children(listing: ZfsListing, dataset: str) -> list[str]:
    prefix = dataset + "/"
    return sorted(n[len(prefix):] for n in listing.datasets if n.startswith(prefix) and "/" not in n[len(prefix):])


def _put_back(ctx: Context, record: RestoreRecord) -> list[str]:
    """Put every entry back, children first, each from fresh facts. Returns what was done."""
    done = []
    for entry in reversed(record.entries):
        steps = undo_steps(entry, undo_facts(ctx, entry, record.entries))
        for step in steps:
            run_step(ctx, step)
        if steps:
            done.append(f"put back {entry.dataset} from {entry.aside}")
    return done + _mount_again(ctx, record)


def _mount_again(ctx: Context, record: RestoreRecord) -> list[str]:
    """Mount what was mounted before the restore and is not now, parents first: a restore killed between
    `zfs unmount` and `zfs rename` left it unmounted, and the VM's disks would not be found."""
    names = sorted({n for e in record.entries for n in e.mounted}, key=lambda n: (n.count("/"), n))
    if not names:
        return []
    listing = ctx.zfs.list_tree(sorted({e.dataset for e in record.entries}))
    done = []
    for name in names:
        info = listing.datasets.get(name)
        if info is not None and not info.mountpoint:
            ctx.zfs.mount(name)
            done.append(f"mounted {name} again")
    return done


def execute_undo(ctx: Context, plan: AsidePlan) -> list[str]:
    done: list[str] = []
    try:
        if plan.stop_first:
            ctx.hypervisor.destroy(plan.domain)
            done.append(f"stopped {plan.domain}")
        done += _put_back(ctx, plan.record)
        _update_record(ctx.state_dir, None, plan.domain)
        if plan.record.was_running:
            ctx.hypervisor.start(plan.domain)
            done.append(f"booted {plan.domain}")
    except (ZfsError, HypervisorError, OSError, RestoreFailed) as exc:
        raise RestoreFailed(f"{exc} — done so far: {'; '.join(done) or 'nothing'}; the record is kept, "
                            "`vmsnapd restore --undo` retries") from exc
    return done


def plan_drop(ctx: Context, target_name: str) -> AsidePlan:
    record = _find_record(ctx, target_name)
    if not record.complete:
        raise RestoreFailed(f"the restore of {record.domain} was interrupted: put it back with "
                            f"`vmsnapd restore --undo {record.domain} --yes` instead")
    plan = AsidePlan(domain=record.domain, record=record)
    if ctx.zfs.dialect == ZFS_FUSE and ctx.hypervisor.state(record.domain) in (RUNNING, PAUSED):
        # Measured: zfs-fuse says "dataset is busy" when destroying a clone while a file of its origin is open.
        raise RestoreFailed(f"zfs-fuse cannot destroy the set-aside datasets while {record.domain} uses the restored "
                            "ones (their origin): shut it down, then drop; nothing was changed")
    for entry in record.entries:
        listing = ctx.zfs.list_tree([entry.aside])
        if entry.aside not in listing.datasets:
            plan.steps.append(f"{entry.aside} is gone already")
            continue
        if _children(listing, entry.aside):
            raise RestoreFailed(f"{entry.aside} has child datasets now ({', '.join(_children(listing, entry.aside))})"
                                ": not destroying it")
        if _origin(ctx, entry.aside) != f"{entry.dataset}@{entry.snapshot}":
            raise RestoreFailed(f"{entry.aside} is not the clone of {entry.dataset}@{entry.snapshot} the restore "
                                "left: not destroying it")
        snaps = [s.name for s in listing.snapshots_of(entry.aside)]
        plan.steps.append(f"destroy {entry.aside} (the state before the restore) and its "
                          f"{len(snaps)} snapshot(s){': ' + ', '.join(snaps) if snaps else ''}")
    return plan


def execute_drop(ctx: Context, plan: AsidePlan) -> list[str]:
    done: list[str] = []
    try:
        for entry in plan.record.entries:
            try:
                run_step(ctx, ZfsStep(verb=Verb.DESTROY_TREE, dataset=entry.aside))
            except DatasetNotFound:
                continue
            done.append(f"destroyed {entry.aside}")
        _update_record(ctx.state_dir, None, plan.domain)
    except (ZfsError, OSError, RestoreFailed) as exc:
        raise RestoreFailed(f"{exc} — done so far: {'; '.join(done) or 'nothing'}") from exc
    done.append("their RAM dumps go at the next prune")
    return done


def _restore_clone(ctx: Context, plan: RestorePlan, done: list[str]) -> list[str]:
    hv, zfs = ctx.hypervisor, ctx.zfs
    source_mounts = {ds: info.mountpoint for ds, info in zfs.list_tree(plan.datasets).datasets.items()}
    made = MadeByRestore(hv, zfs)
    try:
        made.clone(plan.clone_datasets, plan.snapshot, done)
        cloned = zfs.list_tree(made.datasets).datasets
        xml = None
        if plan.ram_dump:
            dump = next((d for d in ctx.ram_store.dumps() if str(d.path) == plan.ram_dump), None)
            xml = dump.manifest.domain_xml if dump and dump.manifest else None
        path_map = {source_mounts[ds]: cloned[c].mountpoint for ds, c in plan.clone_datasets.items()
                    if source_mounts.get(ds) and c in cloned and cloned[c].mountpoint}
        if len(path_map) != len(plan.clone_datasets):
            raise RestoreFailed("a dataset or its clone is not mounted: cannot point the clone's disks at it")
        made.define(clone_domain_xml(xml or hv.xml(plan.domain, inactive=True), plan.clone, path_map), plan.clone)
        done.append(f"defined domain {plan.clone}")
        hv.start(plan.clone)
        done.append(f"booted {plan.clone}")
    except (ZfsError, HypervisorError, RestoreFailed) as exc:
        # Half a clone is worse than none: take back what this restore made, never anything else.
        made.take_back()
        raise RestoreFailed(f"{exc} (the partial clone was removed)") from exc
    return done


@dataclass
class MadeByRestore:
    """The clones and the definition a restore onto clones (`--clone`, or on a backup host) has made so far:
    exactly what a failure takes back."""

    hv: HypervisorPort
    zfs: ZfsPort
    datasets: list[str] = field(default_factory=list)
    domain: str | None = None

    def clone(self, clone_datasets: dict[str, str], snapshot: str, done: list[str]) -> None:
        for ds, clone_ds in clone_datasets.items():
            self.zfs.clone(ds, snapshot, clone_ds)
            self.datasets.append(clone_ds)
            done.append(f"cloned {ds}@{snapshot} as {clone_ds}")

    def define(self, xml: str, domain: str) -> None:
        self.hv.define(xml)
        self.domain = domain

    def take_back(self) -> None:
        if self.domain is not None:
            take_back(lambda: self.hv.undefine(self.domain))
        for clone_ds in reversed(self.datasets):
            take_back(lambda ds=clone_ds: self.zfs.destroy_dataset(ds, recursive=True))


def take_back(action: Callable[[], object]) -> None:
    """One step of taking back a failed restore: a failure is logged, and the other steps and the original error
    still go through."""
    try:
        action()
    except (ZfsError, HypervisorError) as exc:
        log.error("restore: could not take back a step: %s", exc)


class RestorePoint(BaseModel):
    dataset: str
    snapshot: str
    creation: datetime
    held: bool
    domain: str | None = None
    ram_dump: str | None = None
    ram_bytes: int | None = None


def restore_points(ctx: Context, target_name: str | None) -> list[RestorePoint]:
    """Our snapshots of managed datasets (or of one dataset / one VM), with the RAM dump a restore resumes each from
    (vmsnapd.rampairing: the same rule)."""
    survey = ctx.survey()
    wanted: set[str] | None = None
    targets = None
    if target_name and target_name in survey.policies:
        wanted = {target_name}
    elif target_name:
        targets = plan_targets(survey.policies, survey.listing, ctx.hypervisor)
        wanted = set(_find_target(targets, target_name).datasets)
    ours = [snap for snap in survey.listing.snapshots if snap.dataset in survey.policies
            and parse_snapname(snap.name) is not None and (wanted is None or snap.dataset in wanted)]
    paired = paired_dumps(ctx.ram_store.dumps(), vm_domains(survey.policies, targets or _targets(ctx, survey)), ours)
    points = []
    for snap in ours:
        dump = paired.get((snap.dataset, snap.name))
        points.append(RestorePoint(dataset=snap.dataset, snapshot=snap.name, creation=snap.creation,
                                   held=snap.userrefs > 0, domain=dump.domain if dump else None,
                                   ram_dump=str(dump.path) if dump else None, ram_bytes=dump.size if dump else None))
    return points


def _targets(ctx: Context, survey) -> list[Target] | None:
    """The targets (which VM each dataset is), or None when libvirt does not answer: `list` still lists."""
    try:
        return plan_targets(survey.policies, survey.listing, ctx.hypervisor)
    except HypervisorError as exc:
        log.warning("libvirt does not answer (%s): a dataset with domain = \"auto\" is taken for the VM named "
                    "like it", exc)
        return None
