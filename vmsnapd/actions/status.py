"""`status` (for humans and JSON) and `check` (Nagios-style, for monitoring), from one survey.

The result of each pass is remembered per dataset in `state_dir/results.json` (written by every
take/prune pass) so `status` can show the last error and `check` can say that the last cycle failed.

`check` thresholds on the age of the newest snapshot of each period (kept > 0, autosnap on) follow
sanoid's monitor defaults: hourly WARNING past 90 min, CRITICAL past 6 h; daily 28 h / 32 h;
weekly 8 d / 9 d; monthly 32 d / 40 d; yearly 370 d / 400 d; frequently 2× / 4× frequent_period.
Any VM disk on an overlay, any failed last cycle: CRITICAL. Pool capacity: WARNING ≥ 80 %,
CRITICAL ≥ 95 %.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, Field

from vmsnapd.actions.context import Context, Survey
from vmsnapd.actions.report import PassReport
from vmsnapd.config import DatasetPolicy
from vmsnapd.hypervisor import HypervisorError
from vmsnapd.journal import write_file_atomically
from vmsnapd.names import PERIODS, parse_snapname
from vmsnapd.policy import due_periods, next_scheduled, retention, schedule_zone
from vmsnapd.targets import wanted_domain
from vmsnapd.zfs import ZfsError

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
POOL_WARN, POOL_CRIT = 80, 95
AGE_LIMITS = {  # period: (warning, critical)
    "hourly": (timedelta(minutes=90), timedelta(hours=6)),
    "daily": (timedelta(hours=28), timedelta(hours=32)),
    "weekly": (timedelta(days=8), timedelta(days=9)),
    "monthly": (timedelta(days=32), timedelta(days=40)),
    "yearly": (timedelta(days=370), timedelta(days=400)),
}
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_WORDS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


class LastResult(BaseModel):
    action: str
    ok: bool
    at: datetime
    error: str | None = None


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
    overlays: list[str] = Field(default_factory=list)
    last_take: LastResult | None = None
    last_prune: LastResult | None = None


class HostStatus(BaseModel):
    datasets: list[DatasetStatus] = Field(default_factory=list)
    pools: dict[str, int] = Field(default_factory=dict)  # capacity percent
    leftover_overlay_files: list[str] = Field(default_factory=list)
    kept_aside: list[str] = Field(default_factory=list)  # what in-place restores set aside, with undo/drop commands
    problems: list[str] = Field(default_factory=list)


def record_results(ctx: Context, report: PassReport) -> None:
    """Remember the outcome of this pass per dataset (never in dry run)."""
    if ctx.dry_run or not report.outcomes:
        return
    path = ctx.state_dir / RESULTS_FILE
    results = _load_results(path)
    now = ctx.now()
    for outcome in report.outcomes:
        for dataset in outcome.datasets:
            results.setdefault(dataset, {})[outcome.action] = LastResult(
                action=outcome.action, ok=outcome.ok, at=now, error=outcome.error).model_dump(mode="json")
    ctx.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_file_atomically(path, json.dumps(results, indent=1, sort_keys=True).encode())


def _load_results(path: Path) -> dict[str, dict]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s (%s); starting it afresh", path, exc)
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
        dumps = ctx.ram_store.dumps() if Path(ctx.config.daemon.ram_dir).exists() else []
    except OSError as exc:
        status.problems.append(f"cannot read ram_dir: {exc}")
    overlay_dir = Path(ctx.config.daemon.overlay_dir)
    for name, policy in survey.policies.items():
        domain = wanted_domain(policy, domains) if hv else (None if policy.domain in ("auto", "none")
                                                            else policy.domain)
        entry = DatasetStatus(dataset=name, domain=domain, vm_state=None)
        if domain and hv:
            try:
                entry.vm_state = hv.state(domain)
                entry.overlays = [f"{d.target}: {d.source}" for d in hv.overlay_disks(domain, overlay_dir)]
            except HypervisorError as exc:
                entry.vm_state = f"unknown ({exc})"
        entry.periods = _periods(policy, survey, now, tz)
        mine = [d for d in dumps if d.manifest is not None and name in d.manifest.datasets]
        entry.ram_dumps = len(mine)
        entry.ram_bytes = sum(d.size for d in mine)
        last = results.get(name, {})
        entry.last_take = LastResult(**last["take"]) if "take" in last else None
        entry.last_prune = LastResult(**last["prune"]) if "prune" in last else None
        status.datasets.append(entry)
    for pool in sorted({n.split("/", 1)[0] for n in survey.policies}):
        try:
            status.pools[pool] = ctx.zfs.pool_capacity(pool)
        except ZfsError as exc:
            status.problems.append(f"pool {pool}: {exc}")
    from vmsnapd.actions.restore import kept_aside

    status.kept_aside = kept_aside(ctx)
    if overlay_dir.exists():
        status.leftover_overlay_files = sorted(str(p) for p in overlay_dir.iterdir()
                                               if p.name.endswith((".qcow2", ".mem")))
    return status


def _periods(policy: DatasetPolicy, survey: Survey, now: datetime, tz) -> dict[str, PeriodStatus]:
    snaps = survey.listing.snapshots_of(policy.name)
    due = set(due_periods(policy, snaps, now, tz))
    out = {}
    for period in PERIODS:
        kept = retention(policy, period)
        ours = sorted((s for s in snaps if (p := parse_snapname(s.name)) and p.period == period),
                      key=lambda s: s.creation)
        if not kept and not ours:
            continue
        out[period] = PeriodStatus(
            kept=kept, count=len(ours),
            newest=ours[-1].name if ours else None, newest_at=ours[-1].creation if ours else None,
            next_due=now if period in due else (next_scheduled(policy, period, now, tz)
                                                if kept and policy.autosnap else None),
            due_now=period in due,
        )
    return out


def check(ctx: Context) -> tuple[int, str]:
    """(Nagios exit status, one line)."""
    try:
        survey = ctx.survey()
        status = host_status(ctx, survey)
    except (ZfsError, HypervisorError, OSError) as exc:
        return UNKNOWN, f"VMSNAPD UNKNOWN - cannot survey the host: {exc}"
    now = ctx.now()
    findings: list[tuple[int, str]] = []
    for problem in status.problems:
        findings.append((UNKNOWN, problem))
    for entry in status.datasets:
        policy = survey.policies[entry.dataset]
        if entry.overlays:
            findings.append((CRITICAL, f"{entry.domain} left on an overlay ({'; '.join(entry.overlays)})"))
        if entry.last_take and not entry.last_take.ok:
            findings.append((CRITICAL, f"{entry.dataset}: last cycle failed: {entry.last_take.error}"))
        if not policy.autosnap:
            continue
        for period, ps in entry.periods.items():
            if not ps.kept:
                continue
            warn, crit = _limits(policy, period)
            if ps.newest_at is None:
                findings.append((WARNING, f"{entry.dataset}: no {period} snapshot yet"))
                continue
            age = now - ps.newest_at
            if age > crit:
                findings.append((CRITICAL, f"{entry.dataset}: newest {period} is {format_age(age)} old"))
            elif age > warn:
                findings.append((WARNING, f"{entry.dataset}: newest {period} is {format_age(age)} old"))
    for pool, cap in status.pools.items():
        if cap >= POOL_CRIT:
            findings.append((CRITICAL, f"pool {pool} {cap}% full"))
        elif cap >= POOL_WARN:
            findings.append((WARNING, f"pool {pool} {cap}% full"))
    worst = max((level for level, _ in findings if level != UNKNOWN), default=OK)
    if worst == OK and any(level == UNKNOWN for level, _ in findings):
        worst = UNKNOWN
    pools = ", ".join(f"{p} {c}%" for p, c in status.pools.items())
    if not findings:
        return OK, f"VMSNAPD OK - {len(status.datasets)} dataset(s) current; pools: {pools or 'none'}"
    ordered = sorted(findings, key=lambda f: -f[0])
    text = "; ".join(msg for _, msg in ordered[:5]) + (f"; and {len(ordered) - 5} more" if len(ordered) > 5 else "")
    return worst, f"VMSNAPD {STATE_WORDS[worst]} - {text}"


def _limits(policy: DatasetPolicy, period: str) -> tuple[timedelta, timedelta]:
    if period == "frequently":
        base = timedelta(minutes=policy.frequent_period)
        return 2 * base, 4 * base
    return AGE_LIMITS[period]


def format_age(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h"
    return f"{minutes // 1440} d"
