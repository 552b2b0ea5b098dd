"""PURE: replication lag of received datasets (docs/replication.md), for `status` and `check`.

A dataset whose policy says `autosnap = false` gets its snapshots from elsewhere (syncoid, zrepl): its lag is
the age of its newest snapshot of ours, whatever the period. `check` judges it against `replication_warn` /
`replication_crit` (a bare number counts minutes; y/w/d/h/m/s suffixes as the period thresholds; 0: off) and
reports it as performance data `'<dataset> replication_lag'` (`vmsnapd.monitoring.lag_findings`).
"""

from __future__ import annotations

from datetime import datetime

from vmsnapd.config import DatasetPolicy

KEY = "replication"


def lag_seconds(policy: DatasetPolicy, newest: list[datetime], now: datetime) -> int | None:
    """Seconds since the newest snapshot of a received dataset; None for a dataset that takes its own."""
    if policy.autosnap:
        return None
    return int((now - max(newest)).total_seconds()) if newest else -1
