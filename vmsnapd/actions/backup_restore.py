"""`vmsnapd restore NAME SNAPSHOT` on a backup host: the domain is not defined here, its datasets were received.

Chosen when a dataset table names the domain explicitly (`domain = "NAME"`) and libvirt here does not know it.
Everything comes from the received RAM dump's manifest (docs/replication.md): the saved domain XML, the datasets
(mapped to this host's names by the tables' `source` keys, vmsnapd.replica) and each disk's path inside its
dataset. The received datasets themselves are never written: each is cloned from the snapshot beside itself
(`<dataset>-restored-<stamp>`), so a later `zfs receive` from the source still applies and the restore can be
thrown away (destroy the clones, undefine). The domain is then defined from the saved XML with its disks on the
clones and resumed from the received RAM (or booted: `--no-memory`).

Verified before anything is touched: the snapshot on every dataset, the dump's checksum (and decompression),
the saved XML, and what must exist on this host — networks, bridges, emulator, kernel/initrd/loader and every
other file the XML names (a missing bridge would otherwise only show when the guest is already resumed), and
every backing file outside the datasets the manifest recorded (vmsnapd.backing: missing refuses, changed warns).
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Container
from pathlib import Path

from vmsnapd.actions.context import Context
from vmsnapd.actions.restore import (MadeByRestore, RestoreFailed, RestorePlan, check_dump, pairing_problem,
                                     room_to_decompress, start_restored)
from vmsnapd.backing import judge_restore
from vmsnapd.hvtypes import HypervisorError
from vmsnapd.names import InvalidName, parse_snapname, validate_dataset_name
from vmsnapd.ramstore import RamDump
from vmsnapd.runner import CommandError
from vmsnapd.targets import look_at
from vmsnapd.zfs import ZfsError

log = logging.getLogger(__name__)

THAW_WAIT_S = 20.0
CLONE_MARK = "-restored-"


def backup_domain(ctx: Context, target_name: str) -> tuple[str, list[str]] | None:
    """(domain, its datasets) when `target_name` is a domain (or a dataset) whose table names it explicitly and
    libvirt here does not define it: a restore on the backup host. None: the ordinary restore applies."""
    survey = ctx.survey()
    named = {ds: p.domain for ds, p in survey.policies.items() if p.domain not in ("auto", "none")}
    domain = named.get(target_name, target_name)
    datasets = sorted(ds for ds, d in named.items() if d == domain)
    if not datasets or ctx.hypervisor.exists(domain):
        return None
    return domain, datasets


def plan_backup_restore(ctx: Context, domain: str, snapshot: str, *, clone: str | None,
                        no_memory: bool) -> RestorePlan:
    """Verify everything read-only and return the plan (RestorePlan with `define_xml`); RestoreFailed else."""
    if clone:
        raise RestoreFailed(f"{domain} is not defined on this host: restore it under its own name (no --clone); "
                            "the received datasets are cloned anyway and stay untouched")
    dump, not_paired = _verified_dump(ctx, domain, snapshot, no_memory)
    no_memory = no_memory or not_paired is not None
    listing = ctx.zfs.list_tree(dump.manifest.datasets)
    missing = [ds for ds in dump.manifest.datasets if snapshot not in {s.name for s in listing.snapshots_of(ds)}]
    if missing:
        raise RestoreFailed(f"snapshot {snapshot} is not on {', '.join(missing)} here (received datasets; "
                            "check the tables' `source` keys)")
    stamp = ctx.now().strftime("%Y%m%dT%H%M%S")
    plan = RestorePlan(domain=domain, datasets=list(dump.manifest.datasets), snapshot=snapshot,
                       ram_dump=str(dump.path), resume_from_memory=not no_memory, quiesced=dump.manifest.quiesced)
    plan.clone_datasets = _clone_names(plan.datasets, stamp, listing.datasets)
    unmapped = [d.target for d in dump.manifest.disks if not d.relpath or d.dataset not in plan.clone_datasets]
    if unmapped:
        raise RestoreFailed(f"the manifest does not say where disk(s) {', '.join(unmapped)} lie inside the "
                            "received datasets (a dump kept before ram_dataset recorded it): cannot restore here")
    xml = dump.manifest.domain_xml
    backing = judge_restore(dump.manifest.backing, {f.path: look_at(f.path, listing) for f in dump.manifest.backing})
    problems = (host_problems(ctx, xml, {d.source for d in dump.manifest.disks}) + _room_problems(ctx, dump, no_memory)
                + backing.missing)
    if problems:
        raise RestoreFailed(f"{domain} cannot run on this host as saved: " + "; ".join(problems)
                            + "; nothing was changed")
    plan.define_xml = xml
    plan.verified += [f"{snapshot} exists on {', '.join(plan.datasets)} (received)",
                      f"RAM dump {dump.path}: manifest, saved domain XML" + ("" if no_memory else ", checksum"),
                      "networks, bridges, emulator and the files the saved XML names exist on this host",
                      *backing.verified]
    plan.warnings += backing.changed
    if not_paired:
        plan.warnings.append(f"{not_paired}: {domain} is not resumed from it but boots from the disks of {snapshot} "
                             "(its saved definition is used)")
    plan.steps += [f"clone {ds}@{snapshot} as {c} (the received dataset stays as it is)"
                   for ds, c in plan.clone_datasets.items()]
    plan.steps.append(f"define {domain} from the definition saved with the dump, disks on the clones")
    why = "--no-memory" if not_paired is None else "no RAM dump for this snapshot"
    plan.steps.append(f"resume {domain} from RAM dump {dump.path}" if not no_memory else f"boot {domain} ({why})")
    return plan


def _verified_dump(ctx: Context, domain: str, snapshot: str, no_memory: bool) -> tuple[RamDump, str | None]:
    """The cycle's dump (its manifest holds the saved definition) and, when its manifest does not name `snapshot`,
    why (then its RAM is of another instant: the domain boots)."""
    parsed = parse_snapname(snapshot)
    store = ctx.ram_store
    dump = store.find(domain, parsed.stamp) if parsed else None
    if dump is None or dump.manifest is None:
        raise RestoreFailed(f"{domain} is not defined on this host and no RAM dump manifest of the cycle of "
                            f"{snapshot} was found in {_where(ctx)}: its saved definition is needed to define it")
    not_paired = pairing_problem(dump, snapshot)
    no_memory = no_memory or not_paired is not None
    check = check_dump(store, dump, full=not no_memory)
    if check.problem:
        raise RestoreFailed(f"{check.problem}; nothing was changed"
                            + ("" if no_memory else " (--no-memory boots from the disks instead)"))
    return dump, not_paired


def _clone_names(datasets: list[str], stamp: str, existing: Container[str]) -> dict[str, str]:
    try:
        clones = {ds: validate_dataset_name(f"{ds}{CLONE_MARK}{stamp}") for ds in datasets}
    except InvalidName as exc:
        raise RestoreFailed(f"no clone name beside the received dataset: {exc}") from exc
    taken = [c for c in clones.values() if c in existing]
    if taken:
        raise RestoreFailed(f"{', '.join(taken)} exists already; try again in a second")
    return clones


def _room_problems(ctx: Context, dump: RamDump, no_memory: bool) -> list[str]:
    """Room to decompress a compressed dump before resuming from it."""
    if not dump.compressed or no_memory:
        return []
    free = room_to_decompress(ctx, [])
    if free is not None and free < dump.manifest.raw_size:
        return [f"{ctx.state_dir / 'restore'} has {free >> 20} MiB free, decompressing the dump "
                f"needs {dump.manifest.raw_size >> 20} MiB"]
    return []


def _where(ctx: Context) -> str:
    daemon = ctx.config.daemon
    return f"ram_dataset {daemon.ram_dataset}" if daemon.ram_dataset else f"ram_dir {daemon.ram_dir}"


def host_problems(ctx: Context, xml: str, moved_disks: set[str]) -> list[str]:
    """What the saved definition needs that this host lacks (disks in `moved_disks` are put on the clones)."""
    root = ET.fromstring(xml)
    problems = []
    for iface in root.findall("./devices/interface"):
        source = iface.find("source")
        kind = iface.get("type")
        if source is None:
            continue
        if kind == "network" and source.get("network"):
            problems += _network_problem(ctx, source.get("network"))
        elif kind == "bridge" and source.get("bridge") and not Path("/sys/class/net", source.get("bridge")).exists():
            problems.append(f"bridge {source.get('bridge')} does not exist")
    files = [(el.tag, el.text) for el in root.findall("./devices/emulator") + root.findall("./os/kernel")
             + root.findall("./os/initrd") + root.findall("./os/loader") if el.text]
    files += [("disk " + (d.find("target").get("dev") if d.find("target") is not None else "?"), s.get("file"))
              for d in root.findall("./devices/disk") for s in d.findall("source")
              if s.get("file") and s.get("file") not in moved_disks]
    problems += [f"{what} {path} does not exist" for what, path in files if not os.path.exists(path)]
    for el in list(root.iter("log")) + [s for s in root.findall("./devices/serial/source") if s.get("path")]:
        path = el.get("file") or el.get("path")
        if path and not os.path.isdir(os.path.dirname(path)):
            problems.append(f"folder {os.path.dirname(path)} (for {path}) does not exist")
    return problems


def _network_problem(ctx: Context, network: str) -> list[str]:
    try:
        active = ctx.hypervisor.network_active(network)
    except HypervisorError as exc:
        return [f"libvirt: {exc}"]
    if active is None:
        return [f"network {network} is not defined"]
    return [] if active else [f"network {network} is not active (virsh net-start {network})"]


def moved_domain_xml(xml: str, moves: dict[str, str]) -> str:
    """The saved definition with each disk file in `moves` (old path → new path) pointing at its new place."""
    root = ET.fromstring(xml)
    for source in root.findall("./devices/disk/source"):
        if source.get("file") in moves:
            source.set("file", moves[source.get("file")])
    return ET.tostring(root, encoding="unicode")


def execute_backup_restore(ctx: Context, plan: RestorePlan) -> list[str]:
    """Clone, define, resume (or boot). A failure takes back what this restore made (clones, definition)."""
    hv, zfs, done = ctx.hypervisor, ctx.zfs, []
    dump = next(d for d in ctx.ram_store.dumps() if str(d.path) == plan.ram_dump)
    made = MadeByRestore(hv, zfs)
    try:
        made.clone(plan.clone_datasets, plan.snapshot, done)
        mounts = {name: info.mountpoint for name, info in zfs.list_tree(made.datasets).datasets.items()}
        moves = {}
        for disk in dump.manifest.disks:
            mountpoint = mounts.get(plan.clone_datasets[disk.dataset])
            if not mountpoint:
                raise RestoreFailed(f"clone {plan.clone_datasets[disk.dataset]} is not mounted")
            moves[disk.source] = os.path.join(mountpoint, disk.relpath)
        xml = moved_domain_xml(plan.define_xml, moves)
        made.define(xml, plan.domain)
        done.append(f"defined {plan.domain}: " + ", ".join(f"{old} -> {new}" for old, new in moves.items()))
        start_restored(ctx, plan, done, dump=dump, domain_xml=xml)
    except (ZfsError, HypervisorError, RestoreFailed, OSError, CommandError) as exc:
        made.take_back()
        raise RestoreFailed(f"{exc} (what this restore made was removed again; the received datasets were "
                            "never changed)") from exc
    return done
