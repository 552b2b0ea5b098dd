"""PURE: replication lag of received datasets (docs/replication.md), for `status` and `check`.

A dataset whose policy says `autosnap = false` gets its snapshots from elsewhere (syncoid, zrepl): its lag is
the age of its newest snapshot of ours, whatever the period. `check` judges it against `replication_warn` /
`replication_crit` (a bare number counts minutes; y/w/d/h/m/s suffixes as the period thresholds; 0: off) and
reports it as performance data `'<dataset> replication_lag'`.
"""

from __future__ import annotations

from datetime import datetime

from vmsnapd.config import DatasetPolicy
from vmsnapd.monitoring import Finding, PerfDatum, State, format_age, threshold_seconds

KEY = "replication"


def lag_seconds(policy: DatasetPolicy, newest: list[datetime], now: datetime) -> int | None:
    """Seconds since the newest snapshot of a received dataset; None for a dataset that takes its own."""
    if policy.autosnap:
        return None
    return int((now - max(newest)).total_seconds()) if newest else -1


def lag_findings(policy: DatasetPolicy, newest: list[datetime], now: datetime, overrides: dict[str, dict],
                 perf: list[PerfDatum]) -> list[Finding]:
    """CRITICAL past replication_crit (or with nothing received when crit is set), WARNING past warn."""
    lag = lag_seconds(policy, newest, now)
    if lag is None:
        return []
    warn = threshold_seconds(overrides.get("warn", {}).get(KEY, policy.replication_warn), KEY)
    crit = threshold_seconds(overrides.get("crit", {}).get(KEY, policy.replication_crit), KEY)
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
