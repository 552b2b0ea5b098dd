"""`vmsnapd restore TARGET SNAPSHOT`: bring a VM back to a restore point in one command.

In place (default): the VM must be off, or is stopped hard with `--force-stop` (its current state is
discarded anyway); every dataset of the VM is rolled back to SNAPSHOT (`zfs rollback -r`: newer
snapshots of those datasets are destroyed, and their RAM dumps go at the next prune); then the guest
resumes from the cycle's RAM dump (checksum verified, decompressed to a temporary file when needed,
file systems thawed when the cycle froze them), or boots when there is no dump or `--no-memory`.

`--clone NAME`: the datasets are cloned instead (`<parent>/<NAME>` for the VM's first dataset,
`<parent>/<NAME>-<leaf>` for the others), a new domain NAME is defined from the XML saved in the
snapshot's manifest (or the current one) with a new UUID, fresh MAC addresses and its disks on the
clones, and booted. The original VM and its datasets are not touched. A clone always boots: a RAM
state carries the original's identity (MAC, disks) and cannot be resumed under another.

Nothing happens without `--yes`: the plan is printed instead.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from datetime import datetime

from pydantic import BaseModel, Field

from vmsnapd.actions.context import Context
from vmsnapd.hypervisor import PAUSED, RUNNING, SHUTOFF, HypervisorError
from vmsnapd.names import parse_snapname, validate_domain_name, validate_snapshot_name
from vmsnapd.targets import Target, plan_targets
from vmsnapd.zfs import ZfsError

log = logging.getLogger(__name__)


class RestoreFailed(Exception):
    pass


class RestorePlan(BaseModel):
    domain: str
    datasets: list[str]
    snapshot: str
    newer_snapshots_destroyed: list[str] = Field(default_factory=list)
    ram_dump: str | None = None
    resume_from_memory: bool = False
    clone: str | None = None
    clone_datasets: dict[str, str] = Field(default_factory=dict)  # source dataset → clone dataset
    rollback_to: dict[str, str] = Field(default_factory=dict)  # dataset → snapshot (the cycle's last)
    steps: list[str] = Field(default_factory=list)


def plan_restore(ctx: Context, target_name: str, snapshot: str, *, clone: str | None, no_memory: bool,
                 force_stop: bool) -> RestorePlan:
    snapshot = snapshot.split("@", 1)[1] if "@" in snapshot else snapshot
    validate_snapshot_name(snapshot)
    if clone:
        validate_domain_name(clone)
    survey = ctx.survey()
    target = _find_target(plan_targets(survey.policies, survey.listing, ctx.hypervisor), target_name)
    if target.error:
        raise RestoreFailed(target.error)
    domain = target.domain
    missing = [ds for ds in target.datasets
               if not any(s.name == snapshot for s in survey.listing.snapshots_of(ds))]
    if missing:
        raise RestoreFailed(f"snapshot {snapshot} does not exist on {', '.join(missing)}")
    plan = RestorePlan(domain=domain, datasets=list(target.datasets), snapshot=snapshot, clone=clone)
    parsed = parse_snapname(snapshot)
    dump = ctx.ram_store.find(domain, parsed.stamp) if parsed else None
    if dump is not None and dump.manifest is not None:
        plan.ram_dump = str(dump.path)
    plan.resume_from_memory = bool(plan.ram_dump) and not no_memory and not clone
    state = ctx.hypervisor.state(domain)
    if clone:
        parent = target.datasets[0].rsplit("/", 1)[0]
        for i, ds in enumerate(target.datasets):
            leaf = clone if i == 0 else f"{clone}-{ds.rsplit('/', 1)[-1]}"
            plan.clone_datasets[ds] = f"{parent}/{leaf}"
        taken = [c for c in plan.clone_datasets.values() if c in survey.listing.datasets]
        if taken or ctx.hypervisor.exists(clone):
            raise RestoreFailed(f"clone target exists already: {', '.join(taken) or 'domain ' + clone}")
        plan.steps += [f"clone {ds}@{snapshot} as {c}" for ds, c in plan.clone_datasets.items()]
        plan.steps.append(f"define domain {clone} (new UUID and MACs, disks on the clones) and boot it")
        return plan
    if state in (RUNNING, PAUSED):
        if not force_stop:
            raise RestoreFailed(f"{domain} is {state}: shut it down first, or pass --force-stop "
                                "(its current state is discarded by the restore)")
        plan.steps.append(f"stop {domain} hard (it is {state})")
    elif state != SHUTOFF:
        raise RestoreFailed(f"{domain} is {state}; cannot restore it now")
    for ds in target.datasets:
        names = [s.name for s in survey.listing.snapshots_of(ds)]  # in the order they were taken
        # Every snapshot of one cycle holds the same disks: roll back to the cycle's last one, so the
        # cycle's other periods (e.g. the daily beside the hourly) survive the rollback.
        same_cycle = [i for i, n in enumerate(names)
                      if parsed and (p := parse_snapname(n)) and p.stamp == parsed.stamp]
        last = max(same_cycle, default=names.index(snapshot))
        plan.rollback_to[ds] = names[last]
        newer = names[last + 1:]
        plan.newer_snapshots_destroyed += [f"{ds}@{n}" for n in newer]
        plan.steps.append(f"roll {ds} back to {names[last]}" + (f" (destroys {len(newer)} newer snapshot(s))"
                                                                if newer else ""))
    if plan.resume_from_memory:
        plan.steps.append(f"resume {domain} from RAM dump {plan.ram_dump}")
    else:
        why = "--no-memory" if no_memory and plan.ram_dump else "no RAM dump for this snapshot"
        plan.steps.append(f"boot {domain} ({why})")
    return plan


def _find_target(targets: list[Target], name: str) -> Target:
    for target in targets:
        if target.domain and name in (target.domain, target.name, *target.datasets):
            return target
    raise RestoreFailed(f"{name} is not a managed VM (a domain, or a dataset whose policy maps to one)")


def execute_restore(ctx: Context, plan: RestorePlan) -> list[str]:
    """Carry the plan out; returns what was done. Raises RestoreFailed (with what was done so far)."""
    hv, zfs = ctx.hypervisor, ctx.zfs
    done: list[str] = []
    try:
        if plan.clone:
            return _restore_clone(ctx, plan, done)
        if hv.state(plan.domain) in (RUNNING, PAUSED):
            hv.destroy(plan.domain)
            done.append(f"stopped {plan.domain}")
        for ds in plan.datasets:
            zfs.rollback(ds, plan.rollback_to[ds], destroy_newer=True)
            done.append(f"rolled {ds} back to {plan.rollback_to[ds]}")
        if plan.resume_from_memory:
            dump = next(d for d in ctx.ram_store.dumps() if str(d.path) == plan.ram_dump)
            if not ctx.ram_store.verify(dump):
                raise RestoreFailed(f"RAM dump {dump.path} fails its checksum; restore with --no-memory to boot")
            with ctx.ram_store.restore_source(dump, ctx.state_dir / "restore") as memory_file:
                hv.restore_memory(str(memory_file), None, running=True)
            done.append(f"resumed {plan.domain} from {dump.path}")
            if dump.manifest.quiesced:
                # The RAM was captured with the guest's file systems frozen by the agent: thaw them.
                try:
                    hv.fs_thaw(plan.domain)
                    done.append(f"thawed the file systems of {plan.domain}")
                except HypervisorError as exc:
                    done.append(f"could not thaw {plan.domain} ({exc}); run `virsh domfsthaw {plan.domain}`")
        else:
            hv.start(plan.domain)
            done.append(f"booted {plan.domain}")
    except (ZfsError, HypervisorError, OSError) as exc:
        raise RestoreFailed(f"{exc} — done so far: {'; '.join(done) or 'nothing'}") from exc
    return done


def _restore_clone(ctx: Context, plan: RestorePlan, done: list[str]) -> list[str]:
    hv, zfs = ctx.hypervisor, ctx.zfs
    source_mounts = {ds: info.mountpoint for ds, info in zfs.list_tree(plan.datasets).datasets.items()}
    made: list[str] = []
    defined = False
    try:
        for ds, clone_ds in plan.clone_datasets.items():
            zfs.clone(ds, plan.snapshot, clone_ds)
            made.append(clone_ds)
            done.append(f"cloned {ds}@{plan.snapshot} as {clone_ds}")
        cloned = zfs.list_tree(made).datasets
        xml = None
        if plan.ram_dump:
            dump = next((d for d in ctx.ram_store.dumps() if str(d.path) == plan.ram_dump), None)
            xml = dump.manifest.domain_xml if dump and dump.manifest else None
        path_map = {source_mounts[ds]: cloned[c].mountpoint for ds, c in plan.clone_datasets.items()
                    if source_mounts.get(ds) and c in cloned and cloned[c].mountpoint}
        if len(path_map) != len(plan.clone_datasets):
            raise RestoreFailed("a dataset or its clone is not mounted: cannot point the clone's disks at it")
        hv.define(clone_domain_xml(xml or hv.xml(plan.domain, inactive=True), plan.clone, path_map))
        defined = True
        done.append(f"defined domain {plan.clone}")
        hv.start(plan.clone)
        done.append(f"booted {plan.clone}")
    except (ZfsError, HypervisorError, RestoreFailed) as exc:
        # Half a clone is worse than none: take back what this restore made, never anything else.
        if defined:
            hv.undefine(plan.clone)
        for clone_ds in reversed(made):
            zfs.destroy_dataset(clone_ds)
        raise RestoreFailed(f"{exc} (the partial clone was removed)") from exc
    return done


def clone_domain_xml(xml: str, new_name: str, path_map: dict[str, str]) -> str:
    """The domain XML for a clone: new name, no UUID (libvirt makes one), no MACs (fresh ones),
    disk sources moved from the original datasets' mountpoints to the clones'."""
    root = ET.fromstring(xml)
    root.find("name").text = new_name
    for tag in ("uuid",):
        el = root.find(tag)
        if el is not None:
            root.remove(el)
    for iface in root.findall("./devices/interface"):
        mac = iface.find("mac")
        if mac is not None:
            iface.remove(mac)
    for source in root.findall("./devices/disk/source"):
        path = source.get("file")
        if not path:
            continue
        for old, new in sorted(path_map.items(), key=lambda kv: -len(kv[0])):
            if path == old or path.startswith(old.rstrip("/") + "/"):
                source.set("file", new.rstrip("/") + path[len(old.rstrip("/")):])
                break
    # Serial logs and other per-VM files would be shared with the original: give them the clone's name.
    for log_el in root.iter("log"):
        if log_el.get("file"):
            log_el.set("file", re.sub(r"[^/]+$", f"{new_name}-console.log", log_el.get("file")))
    return ET.tostring(root, encoding="unicode")


class RestorePoint(BaseModel):
    dataset: str
    snapshot: str
    creation: datetime
    held: bool
    domain: str | None = None
    ram_dump: str | None = None
    ram_bytes: int | None = None


def restore_points(ctx: Context, target_name: str | None) -> list[RestorePoint]:
    """Our snapshots of managed datasets (or of one dataset / one VM), with the RAM dump of their cycle."""
    survey = ctx.survey()
    wanted: set[str] | None = None
    if target_name:
        if target_name in survey.policies:
            wanted = {target_name}
        else:
            target = _find_target(plan_targets(survey.policies, survey.listing, ctx.hypervisor), target_name)
            wanted = set(target.datasets)
    by_snapshot = {}
    for dump in ctx.ram_store.dumps():
        if dump.manifest is not None:
            for pair in dump.manifest.snapshots():
                by_snapshot[pair] = dump
    points = []
    for snap in survey.listing.snapshots:
        if snap.dataset not in survey.policies or parse_snapname(snap.name) is None:
            continue
        if wanted is not None and snap.dataset not in wanted:
            continue
        dump = by_snapshot.get((snap.dataset, snap.name))
        points.append(RestorePoint(dataset=snap.dataset, snapshot=snap.name, creation=snap.creation,
                                   held=snap.userrefs > 0, domain=dump.domain if dump else None,
                                   ram_dump=str(dump.path) if dump else None, ram_bytes=dump.size if dump else None))
    return points
