"""PURE retention and schedule rules: which periods are due, the cycle's names, which snapshots go.

`now`, the time zone and the snapshot lists are arguments; nothing here touches the host
(except `schedule_zone`, which reads which zone the host's local time is in).
"""

from __future__ import annotations

import calendar
import hashlib
import json
import os
from collections.abc import Collection, Iterable
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from vmsnapd.config import DatasetPolicy
from vmsnapd.models import Snapshot
from vmsnapd.names import PERIODS, STAMP_FORMAT, format_snapname, parse_snapname


def schedule_zone(utc: bool) -> tzinfo:
    """UTC, or the host's local zone with its DST rules (a fixed offset would misplace half the year)."""
    if utc:
        return UTC
    name = os.environ.get("TZ", "").lstrip(":")
    try:
        if name:
            return ZoneInfo(name)
        with open("/etc/localtime", "rb") as handle:
            return ZoneInfo.from_file(handle, key="localtime")
    except (OSError, ValueError, ZoneInfoNotFoundError):
        return datetime.now().astimezone().tzinfo or UTC


def _wall_instant(day: date, hour: int, minute: int, tz: tzinfo) -> datetime:
    # fold=0: a repeated wall time means its first occurrence; a wall time skipped by DST falls forward by the gap.
    return datetime.combine(day, time(hour, minute), tzinfo=tz).astimezone(UTC)


def _clamped_day(year: int, month: int, mday: int) -> date:
    return date(year, month, min(mday, calendar.monthrange(year, month)[1]))


def _previous_months(year: int, month: int, count: int) -> Iterable[tuple[int, int]]:
    for _ in range(count):
        yield year, month
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)


def last_scheduled(policy: DatasetPolicy, period: str, now: datetime, tz: tzinfo = UTC) -> datetime:
    """The latest instant at or before `now` at which `period` is scheduled, in UTC."""
    now = now.astimezone(UTC)
    if period in ("frequently", "hourly"):
        # Sub-daily periods follow the wall minute in every real hour, so a repeated DST hour gets its own snapshots.
        minute_start = now.replace(second=0, microsecond=0)
        wall_minute = minute_start.astimezone(tz).minute
        if period == "frequently":
            back = wall_minute % policy.frequent_period
        else:
            back = (wall_minute - policy.hourly_min) % 60
        return minute_start - timedelta(minutes=back)
    today = now.astimezone(tz).date()
    if period == "daily":
        candidates = [
            _wall_instant(today - timedelta(days=back), policy.daily_hour, policy.daily_min, tz) for back in range(3)
        ]
    elif period == "weekly":
        sanoid_wday = (today.weekday() + 1) % 7  # sanoid counts weekdays from Sunday = 0
        last_day = today - timedelta(days=(sanoid_wday - policy.weekly_wday) % 7)
        candidates = [
            _wall_instant(last_day - timedelta(weeks=back), policy.weekly_hour, policy.weekly_min, tz)
            for back in range(2)
        ]
    elif period == "monthly":
        candidates = [
            _wall_instant(_clamped_day(year, month, policy.monthly_mday), policy.monthly_hour, policy.monthly_min, tz)
            for year, month in _previous_months(today.year, today.month, 3)
        ]
    elif period == "yearly":
        candidates = [
            _wall_instant(
                _clamped_day(year, policy.yearly_mon, policy.yearly_mday), policy.yearly_hour, policy.yearly_min, tz
            )
            for year in (today.year, today.year - 1, today.year - 2)
        ]
    else:
        raise ValueError(f"unknown period {period!r}")
    return max(candidate for candidate in candidates if candidate <= now)


# Steps small enough never to jump over a whole schedule slot of the period.
_SEARCH_STEP = {"frequently": timedelta(minutes=1), "hourly": timedelta(minutes=5), "daily": timedelta(hours=1),
                "weekly": timedelta(hours=6), "monthly": timedelta(hours=12), "yearly": timedelta(days=1)}
_SEARCH_SPAN = {"frequently": timedelta(hours=2), "hourly": timedelta(hours=2), "daily": timedelta(days=3),
                "weekly": timedelta(days=15), "monthly": timedelta(days=63), "yearly": timedelta(days=733)}


def next_scheduled(policy: DatasetPolicy, period: str, now: datetime, tz: tzinfo = UTC) -> datetime:
    """The first instant after `now` at which `period` is scheduled, in UTC (for `status`).

    Found by walking `last_scheduled` forward in steps shorter than any gap between two slots, so
    it follows exactly the same schedule rules (DST, clamped month days) instead of restating them.
    """
    step, span = _SEARCH_STEP[period], _SEARCH_SPAN[period]
    probe = now
    while probe - now <= span:
        probe += step
        candidate = last_scheduled(policy, period, probe, tz)
        if candidate > now:
            return candidate
    raise ValueError(f"no {period} slot within {span} after {now}")


def retention(policy: DatasetPolicy, period: str) -> int:
    """How many snapshots of `period` the policy keeps."""
    if period not in PERIODS:
        raise ValueError(f"unknown period {period!r}")
    return getattr(policy, period)


def ours_of_period(policy: DatasetPolicy, snapshots: Iterable[Snapshot], period: str) -> list[Snapshot]:
    """Our snapshots of `period` on the policy's dataset, newest first (name breaks creation ties)."""
    mine = []
    for snapshot in snapshots:
        parsed = parse_snapname(snapshot.name)
        if snapshot.dataset == policy.name and parsed is not None and parsed.period == period:
            mine.append(snapshot)
    return sorted(mine, key=lambda snapshot: (snapshot.creation, snapshot.name), reverse=True)


def due_periods(policy: DatasetPolicy, snapshots: Iterable[Snapshot], now: datetime, tz: tzinfo = UTC) -> list[str]:
    """Periods to take now: count > 0, autosnap on, and our newest of that period older than its last scheduled
    instant (sanoid's rule: runs missed while down are caught up once, never twice). In PERIODS order."""
    if not policy.autosnap:
        return []
    snapshots = list(snapshots)
    due = []
    for period in PERIODS:
        if retention(policy, period) == 0:
            continue
        mine = ours_of_period(policy, snapshots, period)
        if not mine or mine[0].creation < last_scheduled(policy, period, now, tz):
            due.append(period)
    return due


def cycle_stamp(now: datetime, utc: bool, *, taken: Collection[str] = (), tz: tzinfo | None = None) -> datetime:
    """The wall time, to the second, that names one cycle: `now` in UTC or in local time (`tz`, default the host's).

    A stamp already used by one of our snapshots in `taken` (names, across every dataset of the cycle) is never
    reused: the stamp moves forward one second until it is free. That keeps names and RAM dump files unique when a
    local hour repeats at the end of DST or the clock was set back.
    """
    zone = UTC if utc else (tz or schedule_zone(False))
    stamp = now.astimezone(zone).replace(microsecond=0)
    used = {parsed.stamp for name in taken if (parsed := parse_snapname(name)) is not None}
    while stamp.strftime(STAMP_FORMAT) in used:
        stamp += timedelta(seconds=1)
    return stamp


def snapshot_names(stamp: datetime, periods: Iterable[str]) -> list[str]:
    """One name per due period, all sharing the cycle's stamp."""
    return [format_snapname(stamp, period) for period in periods]


# sanoid's period lengths for pruning (sanoid 2.1, prune_snapshots): a month is 31 days, a year 365.25 days.
PERIOD_SECONDS = {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400, "monthly": 31 * 86400,
                  "yearly": 365.25 * 86400}


def period_length(policy: DatasetPolicy, period: str) -> timedelta:
    """How long one period lasts for retention, as sanoid counts it (frequently: frequent_period minutes)."""
    if period == "frequently":
        return timedelta(minutes=policy.frequent_period)
    return timedelta(seconds=PERIOD_SECONDS[period])


def prune_cutoff(now: datetime, keep: int, length: timedelta) -> datetime | None:
    """`keep` periods of `length` before `now`: snapshots created before it are old enough to go. None when that
    lies before any date Python knows (a count such as `yearly = 9999`, "keep them all"): none is that old."""
    try:
        return now - keep * length
    except OverflowError:
        return None


def prune_set(policy: DatasetPolicy, snapshots: Iterable[Snapshot], now: datetime) -> list[Snapshot]:
    """sanoid's rule, per period with N kept: oldest first, a snapshot goes when its `creation` is older than
    N periods before `now` (strictly) AND more than N of that period remain. Oldest first, like sanoid.

    `now` is cut to whole seconds, as sanoid's time() (and zfs `creation`) are. A held snapshot counts and
    may be chosen exactly as sanoid chooses it (sanoid then fails to destroy it), but it is never returned:
    vmsnapd does not even try. Snapshots that are not ours (names) are neither counted nor returned.
    """
    if not policy.autoprune:
        return []
    snapshots = list(snapshots)
    cutoff_base = now.astimezone(UTC).replace(microsecond=0)
    doomed = []
    for period in PERIODS:
        keep = retention(policy, period)
        cutoff = prune_cutoff(cutoff_base, keep, period_length(policy, period))
        mine = ours_of_period(policy, snapshots, period)[::-1]  # oldest first
        remaining = len(mine)
        for snapshot in mine:
            if remaining <= keep or cutoff is None or snapshot.creation >= cutoff:
                break  # sorted by creation: every later one is younger still
            remaining -= 1
            if snapshot.userrefs == 0:
                doomed.append(snapshot)
    return sorted(doomed, key=lambda snapshot: (snapshot.creation, snapshot.name))


RETENTION_KEYS = (*PERIODS, "frequent_period", "autoprune")


def retention_hash(policy: DatasetPolicy) -> str:
    """A fingerprint of what decides a dataset's prune set: the counts, frequent_period, autoprune."""
    keys = {key: getattr(policy, key) for key in RETENTION_KEYS}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def prune_guard_holds(doomed: int, ours: int, policy_hash: str, confirmed_hash: str | None) -> bool:
    """The first-pass guard: a policy not yet confirmed for this dataset that would destroy more than half of
    its snapshots (ours, every period) is held back (a typo such as `hourly = 3` for 36)."""
    return policy_hash != confirmed_hash and 2 * doomed > ours


def prune_deferred(policy: DatasetPolicy, pool_used_percent: float) -> bool:
    """sanoid's prune_defer: with P > 0, pruning waits until the pool is more than P% used."""
    return policy.prune_defer > 0 and pool_used_percent <= policy.prune_defer
