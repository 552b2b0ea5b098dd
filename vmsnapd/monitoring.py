"""PURE: the `check` verdict (Nagios plugin conventions) from facts gathered elsewhere, and its rendering.

Follows sanoid 2.1's `--monitor-snapshots`: for every managed dataset with `count > 0` of a period (autosnap
on or off: a replication target is monitored too), the age of its newest snapshot of that period against
`<period>_warn` / `<period>_crit` — CRITICAL past crit, or when there is none at all (only if crit is set);
else WARNING past warn; a threshold of 0 turns that check off. Units as sanoid: a bare number counts
one period down (frequently seconds, hourly minutes, daily hours, weekly days, monthly weeks, yearly months
of 31 days); with a suffix y/w/d/h/m/s (case-insensitive) it is that unit. Deviation: `y` is 365 days
(sanoid 2.1 multiplies it by 31 × 365).

Beyond sanoid: CRITICAL for a configured dataset that does not exist, a VM left on an overlay, a
failed last cycle, and a crash-journal record that recover cannot read or has not finished (an interrupted
cycle whose process is gone, minutes later: every pass's recover fails on it), and passes refused outright
(nothing done: the last pass's folder check failed, or state_dir is unsafe); WARNING while the prune guard
holds a dataset back, and per disk of a VM reading a backing file outside the VM's snapshotted datasets
(vmsnapd.backing: its restore points hold only while that file does; CRITICAL when it is missing:
the VM cannot start again);
pool capacity WARNING/CRITICAL at 80 % / 95 % (sanoid's `capacity_*` defaults);
UNKNOWN when nothing is configured or a part of the host does not answer.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import IntEnum

from pydantic import BaseModel, Field

from vmsnapd.backing import BackingFile, disk_findings
from vmsnapd.config import DatasetPolicy
from vmsnapd.lag import KEY as LAG_KEY
from vmsnapd.lag import lag_seconds
from vmsnapd.names import PERIODS
from vmsnapd.ownership import OthersOverlay

# sanoid's fallback unit per period for a bare number (monitor_snapshots: $smallerperiod)
BARE_UNIT_S = {"frequently": 1, "hourly": 60, "daily": 3600, "weekly": 86400, "monthly": 7 * 86400,
               "yearly": 31 * 86400, "replication": 60}  # replication: vmsnapd.lag
SUFFIX_S = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
CAPACITY_WARN, CAPACITY_CRIT = 80, 95
_AGE = re.compile(r"(\d+)([yYwWdDhHmMsS]?)")


class State(IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


def threshold_seconds(value: int | str, period: str) -> int:
    """A threshold as written (sanoid's syntax) in seconds; 0: off."""
    match = _AGE.fullmatch(str(value).strip())
    if match is None:
        raise ValueError(f"{value!r} is not an age such as 90, \"90m\", \"2d\"")
    number, suffix = int(match.group(1)), match.group(2).lower()
    return number * (SUFFIX_S[suffix] if suffix else BARE_UNIT_S[period])


class DatasetFacts(BaseModel):
    """What `check` needs to know about one managed dataset."""

    policy: DatasetPolicy
    newest: dict[str, datetime] = Field(default_factory=dict)  # period -> creation of our newest snapshot
    domain: str | None = None
    overlays: list[str] = Field(default_factory=list)
    others_overlays: list[OthersOverlay] = Field(default_factory=list)  # on another tool's snapshot's overlay
    live_caveat: str | None = None  # why its live RAM captures may not hold one instant
    outside_backing: list[BackingFile] = Field(default_factory=list)  # files its disks read outside the VM's datasets
    backing_unknown: list[str] = Field(default_factory=list)  # disks whose backing chain could not be read
    last_cycle_error: str | None = None  # set when the last take of this dataset failed
    prune_held_back: bool = False  # the daemon's prune guard waits for `vmsnapd once --prune --confirm`


class CheckFacts(BaseModel):
    datasets: list[DatasetFacts] = Field(default_factory=list)
    configured_tables: int = 0
    missing: list[str] = Field(default_factory=list)  # configured datasets that do not exist
    pools: dict[str, int] = Field(default_factory=dict)  # capacity percent
    problems: list[str] = Field(default_factory=list)  # parts of the host that did not answer
    # The crash journal: records recover cannot read, and cycles interrupted long enough ago that a pass should
    # have recovered them (vmsnapd.actions.status.journal_facts); either way every pass's recover fails.
    journal_unreadable: list[str] = Field(default_factory=list)
    interrupted_cycles: list[str] = Field(default_factory=list)
    # Passes refused outright, nothing done (the folder check; an unsafe state_dir): status.passes_refused.
    passes_refused: list[str] = Field(default_factory=list)


class Overrides(BaseModel):
    """`check -w/-c PERIOD=AGE` (and `capacity=PERCENT`): win over every dataset's policy."""

    warn: dict[str, int | str] = Field(default_factory=dict)
    crit: dict[str, int | str] = Field(default_factory=dict)


class Finding(BaseModel):
    state: State
    text: str


class PerfDatum(BaseModel):
    label: str
    value: float | None  # None: undetermined ('U')
    unit: str
    warn: float | None = None
    crit: float | None = None
    min: float | None = None
    max: float | None = None

    def render(self) -> str:
        def num(x: float | None) -> str:
            return "" if x is None else f"{x:g}"

        value = "U" if self.value is None else f"{self.value:g}{self.unit}"
        fields = [value, num(self.warn), num(self.crit), num(self.min), num(self.max)]
        while fields[-1] == "":
            fields.pop()
        return f"'{self.label}'=" + ";".join(fields)


class CheckResult(BaseModel):
    state: State
    findings: list[Finding] = Field(default_factory=list)
    perfdata: list[PerfDatum] = Field(default_factory=list)
    summary: str = ""

    def nagios(self) -> str:
        """One line: `VMSNAPD <STATE> - <text> | <perfdata>`."""
        perf = " ".join(p.render() for p in self.perfdata)
        return f"VMSNAPD {self.state.name} - {self.summary}" + (f" | {perf}" if perf else "")


def _limits(policy: DatasetPolicy, period: str, overrides: Overrides) -> tuple[int, int]:
    warn = overrides.warn.get(period, getattr(policy, f"{period}_warn"))
    crit = overrides.crit.get(period, getattr(policy, f"{period}_crit"))
    return threshold_seconds(warn, period), threshold_seconds(crit, period)


def _age_findings(facts: DatasetFacts, now: datetime, overrides: Overrides,
                  perf: list[PerfDatum]) -> list[Finding]:
    policy = facts.policy
    found = []
    for period in PERIODS:
        if getattr(policy, period) == 0:
            continue
        warn, crit = _limits(policy, period, overrides)
        newest = facts.newest.get(period)
        age = int((now - newest).total_seconds()) if newest else None
        perf.append(PerfDatum(label=f"{policy.name} {period}_age", value=age, unit="s",
                              warn=warn or None, crit=crit or None, min=0))
        if crit and (age is None or age > crit):
            text = (f"{policy.name} has no {period} snapshot" if age is None else
                    f"{policy.name} newest {period} is {format_age(age)} old (should be < {format_age(crit)})")
            found.append(Finding(state=State.CRITICAL, text=text))
        elif warn and age is not None and age > warn:
            found.append(Finding(state=State.WARNING, text=f"{policy.name} newest {period} is {format_age(age)} "
                                                           f"old (should be < {format_age(warn)})"))
    return found


def plan_check(facts: CheckFacts, now: datetime, overrides: Overrides | None = None) -> CheckResult:
    """The verdict: the worst state of all findings; UNKNOWN only when nothing is worse than OK."""
    overrides = overrides or Overrides()
    findings: list[Finding] = []
    perf: list[PerfDatum] = []
    if facts.configured_tables == 0:
        findings.append(Finding(state=State.UNKNOWN, text="no dataset configured: nothing is monitored"))
    findings += [Finding(state=State.UNKNOWN, text=p) for p in facts.problems]
    findings += [Finding(state=State.CRITICAL, text=f"configured dataset {name} does not exist")
                 for name in facts.missing]
    findings += [Finding(state=State.CRITICAL, text=f"journal record {line}") for line in facts.journal_unreadable]
    findings += [Finding(state=State.CRITICAL, text=line) for line in facts.interrupted_cycles]
    findings += [Finding(state=State.CRITICAL, text=line) for line in facts.passes_refused]
    for dataset in facts.datasets:
        findings += _dataset_findings(dataset)
        findings += _age_findings(dataset, now, overrides, perf)
        findings += lag_findings(dataset.policy, list(dataset.newest.values()), now, overrides.model_dump(), perf)
    findings += _capacity_findings(facts.pools, overrides, perf)
    worst = max((f.state for f in findings if f.state != State.UNKNOWN), default=State.OK)
    if worst == State.OK and any(f.state == State.UNKNOWN for f in findings):
        worst = State.UNKNOWN
    ordered = sorted(findings, key=lambda f: (f.state != State.UNKNOWN, f.state), reverse=True)
    return CheckResult(state=worst, findings=ordered, perfdata=perf, summary=_safe(_summary(ordered, facts)))


def _dataset_findings(dataset: DatasetFacts) -> list[Finding]:
    """An overlay left behind, the last cycle failed, live RAM captures known to be unreliable, a disk reading a file
    outside the VM's datasets, pruning held back by the guard."""
    found = []
    if dataset.overlays:
        found.append(Finding(state=State.CRITICAL, text=f"{dataset.domain} left on an overlay "
                                                        f"({'; '.join(dataset.overlays)})"))
    found += [Finding(state=State.WARNING, text=f"{dataset.domain} runs on an overlay vmsnapd did not make, "
                                                 f"{overlay}: snapshotted as it is, left alone; merge it with "
                                                 f"`{overlay.merge_hint(dataset.domain or '?')}`")
              for overlay in dataset.others_overlays]
    if dataset.last_cycle_error is not None:
        found.append(Finding(state=State.CRITICAL, text=f"{dataset.policy.name}: last cycle failed: "
                                                        f"{dataset.last_cycle_error}"))
    if dataset.live_caveat is not None:
        found.append(Finding(state=State.WARNING, text=f"{dataset.policy.name} ({dataset.domain}): "
                                                       f"{dataset.live_caveat}"))
    found += [Finding(state=State.CRITICAL if missing else State.WARNING, text=f"{dataset.policy.name}: {text}")
              for text, missing in disk_findings(dataset.domain or "?", dataset.outside_backing)]
    found += [Finding(state=State.WARNING, text=f"{dataset.policy.name}: {text}") for text in dataset.backing_unknown]
    if dataset.prune_held_back:
        found.append(Finding(state=State.WARNING, text=f"{dataset.policy.name}: pruning held back by the "
                                                       "prune guard (vmsnapd once --prune --confirm)"))
    return found


def _capacity_findings(pools: dict[str, int], overrides: Overrides, perf: list[PerfDatum]) -> list[Finding]:
    cap_warn = int(overrides.warn.get("capacity", CAPACITY_WARN))
    cap_crit = int(overrides.crit.get("capacity", CAPACITY_CRIT))
    found = []
    for pool, capacity in sorted(pools.items()):
        perf.append(PerfDatum(label=f"{pool} capacity", value=capacity, unit="%", warn=cap_warn or None,
                              crit=cap_crit or None, min=0, max=100))
        if cap_crit and capacity >= cap_crit:
            found.append(Finding(state=State.CRITICAL, text=f"pool {pool} {capacity}% full"))
        elif cap_warn and capacity >= cap_warn:
            found.append(Finding(state=State.WARNING, text=f"pool {pool} {capacity}% full"))
    return found


def _summary(ordered: list[Finding], facts: CheckFacts) -> str:
    if ordered:
        return "; ".join(f.text for f in ordered[:5]) + (f"; and {len(ordered) - 5} more" if len(ordered) > 5
                                                         else "")
    pools = ", ".join(f"{p} {c}%" for p, c in sorted(facts.pools.items()))
    return f"{len(facts.datasets)} dataset(s) have fresh snapshots; pools: {pools or 'none'}"


def _safe(text: str) -> str:
    """The plugin line must stay one line, and '|' would start the performance data."""
    return " ".join(text.replace("|", "/").split())


def format_age(seconds: int) -> str:
    """As sanoid's displaytime: `1d 2h 3m 4s`, leading zero units left out."""
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if days:
        parts.append(f"{days}d")
    if hours or days:
        parts.append(f"{hours}h")
    if minutes or hours or days:
        parts.append(f"{minutes}m")
    parts.append(f"{secs}s")
    return " ".join(parts)


def parse_override(text: str) -> tuple[str, int | str]:
    """`hourly=2h` / `capacity=90` (for argparse): (key, value), validated."""
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or key not in (*PERIODS, "capacity", "replication"):
        raise ValueError(f"{text!r}: expected PERIOD=AGE (one of {', '.join(PERIODS)}) or capacity=PERCENT")
    if key == "capacity":
        if not value.isdigit() or int(value) > 100:
            raise ValueError(f"{text!r}: capacity must be a percent 0-100")
        return key, int(value)
    threshold_seconds(value, key)
    return key, value


def lag_findings(policy: DatasetPolicy, newest: list[datetime], now: datetime, overrides: dict[str, dict],
                 perf: list[PerfDatum]) -> list[Finding]:
    """CRITICAL past replication_crit (or with nothing received when crit is set), WARNING past warn."""
    lag = lag_seconds(policy, newest, now)
    if lag is None:
        return []
    warn = threshold_seconds(overrides.get("warn", {}).get(LAG_KEY, policy.replication_warn), LAG_KEY)
    crit = threshold_seconds(overrides.get("crit", {}).get(LAG_KEY, policy.replication_crit), LAG_KEY)
    perf.append(PerfDatum(label=f"{policy.name} replication_lag", value=None if lag < 0 else lag, unit="s",
                          warn=warn or None, crit=crit or None, min=0))
    if lag < 0:
        return [Finding(state=State.CRITICAL, text=f"{policy.name}: nothing received yet")] if crit else []
    text = f"{policy.name} replication lag {format_age(lag)}"
    if crit and lag > crit:
        return [Finding(state=State.CRITICAL, text=f"{text} (should be < {format_age(crit)})")]
    if warn and lag > warn:
        return [Finding(state=State.WARNING, text=f"{text} (should be < {format_age(warn)})")]
    return []
