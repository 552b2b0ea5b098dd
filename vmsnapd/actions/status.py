"""`status` (for humans and JSON) and `check` (Nagios-style, for monitoring), from one survey.

The result of each pass is remembered per dataset in `state_dir/results.json` (written by every
take/prune pass) so `status` can show the last error and `check` can say that the last cycle failed.

`check` gathers the facts here; the verdict is the pure `vmsnapd.monitoring.plan_check` (sanoid's
monitor thresholds per dataset and period, see there).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, Field, TypeAdapter

from vmsnapd.actions.context import Context, Survey
from vmsnapd.report import PassReport
from vmsnapd.asides import kept_aside_lines
from vmsnapd.config import ConfigError, DaemonSettings, DatasetPolicy, read_regular_file
from vmsnapd.domxml import disks_below
from vmsnapd.files import check_folder_to_be, ensure_private_directory, write_file_atomically
from vmsnapd.hvtypes import HypervisorError
from vmsnapd.journal import JournalScan
from vmsnapd.lag import lag_seconds
from vmsnapd.logsetup import NOTICE
from vmsnapd.monitoring import CheckFacts, CheckResult, DatasetFacts, Overrides, State, plan_check
from vmsnapd.names import PERIODS
from vmsnapd.ownership import OthersOverlay, others_overlays
from vmsnapd.pruneguard import PruneGuard
from vmsnapd.ports import HypervisorPort
from vmsnapd.policy import due_periods, next_scheduled, ours_of_period, retention, retention_hash, schedule_zone
from vmsnapd.backing import BackingFile
from vmsnapd.rampairing import paired_dumps, vm_domains
from vmsnapd.targets import (DatasetBacking, Target, backing_by_dataset, plan_targets, read_backing,
                             wanted_domain)
from vmsnapd.zfs import ZfsError

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
# Present only while passes are refused outright (the folder check: nothing done): written by each refused pass,
# removed by the next pass that runs. `check` calls it CRITICAL.
REFUSED_FILE = "pass-refused.json"


class LastResult(BaseModel):
    action: str
    ok: bool
    at: datetime
    error: str | None = None


class PassRefusal(BaseModel):
    """What state_dir/pass-refused.json holds: since when passes are refused, the last one, and why."""

    since: datetime
    at: datetime
    reasons: list[str]


class PeriodStatus(BaseModel):
    kept: int
    count: int
    newest: str | None = None
    newest_at: datetime | None = None
    next_due: datetime | None = None
    due_now: bool = False


class DatasetStatus(BaseModel):
    dataset: str
    domain: str | None
    vm_state: str | None
    periods: dict[str, PeriodStatus] = Field(default_factory=dict)
    ram_dumps: int = 0
    ram_bytes: int = 0
    replication_lag_s: int | None = None  # autosnap = false: age of the newest snapshot received (vmsnapd.lag)
    overlays: list[str] = Field(default_factory=list)
    others_overlays: list[OthersOverlay] = Field(default_factory=list)  # on an overlay another tool's snapshot made
    live_caveat: str | None = None  # its live RAM captures may not hold one instant (Hypervisor.live_ram_caveat)
    outside_backing: list[BackingFile] = Field(default_factory=list)  # its disks' backing files outside the VM's
    backing_unknown: list[str] = Field(default_factory=list)  # datasets; disks whose chain is unknown (vmsnapd.backing)
    last_take: LastResult | None = None
    last_prune: LastResult | None = None


class HostStatus(BaseModel):
    datasets: list[DatasetStatus] = Field(default_factory=list)
    pools: dict[str, int] = Field(default_factory=dict)  # capacity percent
    leftover_files: list[str] = Field(default_factory=list)  # overlays and RAM files in overlay_dir/ram_staging_dir
    kept_aside: list[str] = Field(default_factory=list)  # what in-place restores set aside, with undo/drop commands
    journal_unreadable: list[str] = Field(default_factory=list)  # crash-journal records recover cannot read
    interrupted_cycles: list[str] = Field(default_factory=list)  # records of cycles crashed and not yet recovered
    passes_refused: list[str] = Field(default_factory=list)  # passes refused outright (nothing done), and why
    problems: list[str] = Field(default_factory=list)


def record_results(ctx: Context, report: PassReport) -> None:
    """Remember the outcome of this pass per dataset (never in dry run). A file that cannot be written (a
    folder in its place, state_dir unsafe or full) is an error of the pass in `report.errors`, logged: the
    snapshots were taken and pruned all the same, and the pass's report must still be shown (it was an OSError
    out of the pass: `once` printed nothing of what it did, the daemon logged a traceback)."""
    if ctx.dry_run or not report.outcomes:
        return
    path = ctx.state_dir / RESULTS_FILE
    results = _load_results(path)
    now = ctx.now()
    for outcome in report.outcomes:
        for dataset in outcome.datasets:
            results.setdefault(dataset, {})[outcome.action] = LastResult(
                action=outcome.action, ok=outcome.ok, at=now, error=outcome.error).model_dump(mode="json")
    try:
        ensure_private_directory(ctx.state_dir)
        write_file_atomically(path, json.dumps(results, indent=1, sort_keys=True).encode())
    except OSError as exc:
        message = (f"cannot record this pass's results in {path} ({exc.strerror or exc}): status and check do not "
                   "show them")
        log.error("%s", message)
        report.errors.append(message)


_RESULTS = TypeAdapter(dict[str, dict[str, LastResult]])


def record_refused(ctx: Context, report: PassReport, reasons: list[str]) -> None:
    """Remember that this pass was refused outright and why (never in dry run), keeping since when; a record that
    cannot be written is an error of the pass, logged (state_dir itself unsafe: `check` finds that on its own)."""
    if ctx.dry_run:
        return
    path = ctx.state_dir / REFUSED_FILE
    now = ctx.now()
    earlier = _read_refusal(path) if os.path.lexists(path) else None
    since = earlier.since if isinstance(earlier, PassRefusal) else now
    record = PassRefusal(since=since, at=now, reasons=reasons)
    try:
        ensure_private_directory(ctx.state_dir)
        write_file_atomically(path, record.model_dump_json(indent=1).encode())
    except (OSError, ValueError) as exc:
        message = f"cannot record the refusal in {path} ({exc}): check does not show it"
        log.error("%s", message)
        report.errors.append(message)


def clear_refused(ctx: Context, report: PassReport) -> None:
    """This pass runs: passes are no longer refused (never in dry run)."""
    if ctx.dry_run:
        return
    path = ctx.state_dir / REFUSED_FILE
    try:
        path.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        message = f"cannot remove {path} ({exc.strerror or exc}): check still says passes are refused"
        log.error("%s", message)
        report.errors.append(message)
        return
    log.log(NOTICE, "passes run again: %s removed", path)


def _read_refusal(path: Path) -> PassRefusal | str:
    """The record, or why it cannot be read (a FIFO or a device there is never opened)."""
    try:
        return PassRefusal.model_validate_json(read_regular_file(path)[0])
    except ConfigError as exc:
        return "; ".join(exc.errors)
    except (OSError, ValueError, RecursionError) as exc:  # ValueError includes pydantic's ValidationError
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def passes_refused(ctx: Context) -> list[str]:
    """Lines for status and check: a state_dir every pass would refuse (the pass lock's folder rule, checked here
    read-only: no pass can record that), and the refusal the last pass recorded."""
    lines = []
    try:
        check_folder_to_be(ctx.state_dir)
    except OSError as exc:
        lines.append(f"every pass is refused, nothing done: daemon.state_dir: {exc}")
    path = ctx.state_dir / REFUSED_FILE
    if not os.path.lexists(path):
        return lines
    record = _read_refusal(path)
    if isinstance(record, str):  # the file exists only while passes are refused
        lines.append(f"a pass was refused, nothing done (its record {path} cannot be read: {record}; the next pass "
                     "that runs removes it)")
    else:
        lines.append(f"passes refused, nothing done, since {record.since:%Y-%m-%d %H:%M:%S} (last "
                     f"{record.at:%Y-%m-%d %H:%M:%S}): {'; '.join(record.reasons)}")
    return lines


def _load_results(path: Path) -> dict[str, dict]:
    """The remembered results, as JSON data; a damaged file (any content) is a warning and starts afresh."""
    try:
        return _RESULTS.dump_python(_RESULTS.validate_json(path.read_bytes()), mode="json")
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:  # ValueError includes pydantic's ValidationError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning("cannot read %s (%s); starting it afresh", path, reason)
        return {}


def host_status(ctx: Context, survey: Survey | None = None) -> HostStatus:
    survey = survey or ctx.survey()
    now = ctx.now()
    tz = schedule_zone(ctx.config.daemon.utc)
    status = HostStatus()
    results = _load_results(ctx.state_dir / RESULTS_FILE)
    hv = None
    domains: set[str] = set()
    if any(p.domain != "none" for p in survey.policies.values()):
        try:
            hv = ctx.hypervisor
            domains = set(hv.domain_names())
        except HypervisorError as exc:
            status.problems.append(f"libvirt: {exc}")
            hv = None
    dumps = []
    try:
        dumps = ctx.ram_store.dumps() if ctx.ram_store.ram_dir.exists() else []
    except OSError as exc:
        status.problems.append(f"cannot read ram_dir: {exc}")
    overlay_dir = Path(ctx.config.daemon.overlay_dir)
    targets = _targets(survey, hv, status.problems)
    backing = _backing(survey, hv, targets, status.problems)
    # Each dataset's RAM dumps: those restore resumes one of its snapshots from (vmsnapd.rampairing).
    ram: dict[str, dict[str, int]] = {}
    for (dataset, _name), dump in paired_dumps(dumps, vm_domains(survey.policies, targets),
                                               survey.listing.snapshots).items():
        ram.setdefault(dataset, {})[str(dump.path)] = dump.size
    for name, policy in survey.policies.items():
        domain = wanted_domain(policy, domains) if hv else (None if policy.domain in ("auto", "none")
                                                            else policy.domain)
        entry = DatasetStatus(dataset=name, domain=domain, vm_state=None)
        if domain and hv:
            _ask_libvirt(entry, hv, policy, overlay_dir)
        entry.periods = _periods(policy, survey, now, tz)
        entry.outside_backing, entry.backing_unknown = backing[name].files, backing[name].unknown
        entry.replication_lag_s = lag_seconds(policy, [p.newest_at for p in entry.periods.values() if p.newest_at],
                                              now)
        entry.ram_dumps = len(ram.get(name, {}))
        entry.ram_bytes = sum(ram.get(name, {}).values())
        last = results.get(name, {})
        entry.last_take = LastResult(**last["take"]) if "take" in last else None
        entry.last_prune = LastResult(**last["prune"]) if "prune" in last else None
        status.datasets.append(entry)
    status.problems += [f"dataset {name} unreadable in zfs output: {why}"
                        for name, why in survey.listing.unreadable.items()]
    for pool in sorted({n.split("/", 1)[0] for n in survey.policies}):
        try:
            status.pools[pool] = ctx.zfs.pool_capacity(pool)
        except ZfsError as exc:
            status.problems.append(f"pool {pool}: {exc}")
    status.kept_aside = kept_aside_lines(ctx.state_dir)
    status.leftover_files = _leftover_files(ctx.config.daemon)
    status.journal_unreadable, status.interrupted_cycles = journal_facts(ctx.journal.scan(), now, _process_exists)
    status.passes_refused = passes_refused(ctx)
    return status


# A cycle whose process is gone is recovered by the daemon's next pass (one a minute): a record older than this
# whose process is gone means recovery keeps failing on it (or no daemon runs).
INTERRUPTED_AFTER = timedelta(minutes=3)


def _process_exists(pid: int) -> bool:
    if not 0 < pid < 2**22:  # kill(0) / kill(-1) would mean a process group / every process; beyond pid_max: none
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists
        return True
    return True


def journal_facts(scan: JournalScan, now: datetime, process_exists) -> tuple[list[str], list[str]]:
    """(records recover cannot read, cycles interrupted and not recovered) as lines for status and check.
    A readable record is a cycle in flight while its process runs or it was written in the last
    INTERRUPTED_AFTER; a record whose time cannot be read counts as old."""
    unreadable = [f"{bad.path} cannot be read: {bad.reason} (recover fails until it is removed; docs/operations.md, "
                  "\"After a crash\")" for bad in scan.unreadable]
    interrupted = []
    for record in scan.records:
        try:
            updated = datetime.fromisoformat(record.updated_at)
            recent = updated.tzinfo is not None and now - updated < INTERRUPTED_AFTER
        except ValueError:
            recent = False
        if not recent and not process_exists(record.pid):
            interrupted.append(f"cycle {record.cycle_id} interrupted in state {record.state.value} (last written "
                               f"{record.updated_at}, process {record.pid} gone) and not recovered: run `vmsnapd "
                               "recover` and see what it says")
    return unreadable, interrupted


def _leftover_files(daemon: DaemonSettings) -> list[str]:
    """Overlays and fresh RAM files lying in overlay_dir or the staging folder (a cycle's, or a crash's)."""
    folders = [Path(daemon.overlay_dir)] + ([Path(daemon.ram_staging_dir)] if daemon.ram_staging_dir else [])
    return sorted(str(p) for folder in folders if folder.is_dir() for p in folder.iterdir()
                  if p.name.endswith((".qcow2", ".mem")))


def _targets(survey: Survey, hv: HypervisorPort | None, problems: list[str]) -> list[Target] | None:
    """Which VM each dataset is (plan_targets); None when libvirt was not asked or did not answer."""
    if hv is None:
        return None
    try:
        return plan_targets(survey.policies, survey.listing, hv)
    except HypervisorError as exc:
        problems.append(f"libvirt: {exc}")
        return None


def _backing(survey: Survey, hv: HypervisorPort | None, targets: list[Target] | None,
             problems: list[str]) -> dict[str, DatasetBacking]:
    """Per dataset, the backing files of its VM's disks outside the VM's datasets (vmsnapd.backing)."""
    found: dict[str, DatasetBacking] = {}
    if hv is not None and targets is not None:
        try:
            read_backing(targets, hv, survey.listing)
            found = backing_by_dataset(targets, survey.listing)
        except HypervisorError as exc:
            problems.append(f"libvirt: {exc}")
    return {name: found.get(name, DatasetBacking()) for name in survey.policies}


def _ask_libvirt(entry: DatasetStatus, hv: HypervisorPort, policy: DatasetPolicy, overlay_dir: Path) -> None:
    """The VM's state, the overlays it runs on, and whether its live RAM captures can be trusted."""
    try:
        entry.vm_state = hv.state(entry.domain)
        disks = hv.disks(entry.domain)  # read once: vmsnapd's overlays and another tool's
        entry.overlays = [f"{d.target}: {d.source}" for d in disks_below(disks, str(overlay_dir.resolve()))]
        entry.others_overlays = others_overlays([(d.target, d.source) for d in disks],
                                                hv.snapshot_records(entry.domain), str(overlay_dir))
        if policy.memory and policy.live:
            entry.live_caveat = hv.live_ram_caveat(entry.domain)
    except HypervisorError as exc:
        entry.vm_state = f"unknown ({exc})"


def _periods(policy: DatasetPolicy, survey: Survey, now: datetime, tz) -> dict[str, PeriodStatus]:
    snaps = survey.listing.snapshots_of(policy.name)
    due = set(due_periods(policy, snaps, now, tz))
    out = {}
    for period in PERIODS:
        kept = retention(policy, period)
        ours = ours_of_period(policy, snaps, period)  # newest first, the one rule of which snapshots are ours
        if not kept and not ours:
            continue
        out[period] = PeriodStatus(
            kept=kept, count=len(ours),
            newest=ours[0].name if ours else None, newest_at=ours[0].creation if ours else None,
            next_due=now if period in due else (next_scheduled(policy, period, now, tz)
                                                if kept and policy.autosnap else None),
            due_now=period in due,
        )
    return out


def check(ctx: Context, overrides: Overrides | None = None) -> CheckResult:
    """Gather the facts (zfs, libvirt, results.json, prune-guard.json) and let monitoring.plan_check judge them."""
    if not ctx.config.datasets:
        return plan_check(CheckFacts(), ctx.now(), overrides)
    try:
        survey = ctx.survey()
        status = host_status(ctx, survey)
    except (ZfsError, HypervisorError, OSError) as exc:
        return CheckResult(state=State.UNKNOWN, summary=f"cannot survey the host: {exc}")
    facts = CheckFacts(configured_tables=len(ctx.config.datasets), pools=status.pools, problems=status.problems,
                       journal_unreadable=status.journal_unreadable, interrupted_cycles=status.interrupted_cycles,
                       passes_refused=status.passes_refused,
                       missing=sorted(name for name in ctx.config.datasets if name not in survey.listing.datasets))
    guard = PruneGuard(ctx.state_dir, active=False).data
    for entry in status.datasets:
        last = entry.last_take
        policy = survey.policies[entry.dataset]
        digest = retention_hash(policy)
        facts.datasets.append(DatasetFacts(
            policy=policy, domain=entry.domain, overlays=entry.overlays, others_overlays=entry.others_overlays,
            live_caveat=entry.live_caveat,
            outside_backing=entry.outside_backing, backing_unknown=entry.backing_unknown,
            newest={period: ps.newest_at for period, ps in entry.periods.items() if ps.newest_at is not None},
            last_cycle_error=(last.error or "failed") if last and not last.ok else None,
            prune_held_back=guard["announced"].get(policy.name) == digest != guard["confirmed"].get(policy.name)))
    return plan_check(facts, ctx.now(), overrides)


def format_age(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h"
    return f"{minutes // 1440} d"
