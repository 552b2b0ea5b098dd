from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from vmsnapd.config import DatasetPolicy
from vmsnapd.names import PERIODS, parse_snapname
from vmsnapd.policy import (
    Snapshot,
    cycle_stamp,
    due_periods,
    last_scheduled,
    period_length,
    prune_deferred,
    prune_set,
    snapshot_names,
)

DATASET = "rpool/VM/web"


def policy(**keys):
    return DatasetPolicy(name=DATASET, configured_by="rpool/VM", **keys)


def snap(name, creation, userrefs=0, dataset=DATASET):
    return Snapshot(dataset=dataset, name=name, creation=creation, userrefs=userrefs)


def take(pol, snapshots, now, utc=True, tz=None):
    """What a pass does: take what is due with one shared stamp, then prune."""
    periods = due_periods(pol, snapshots, now, tz or UTC)
    stamp = cycle_stamp(now, utc, taken=[s.name for s in snapshots], tz=tz)
    taken = [snap(name, now.replace(microsecond=0)) for name in snapshot_names(stamp, periods)]
    after = snapshots + taken
    doomed = prune_set(pol, after, now)
    return taken, doomed, [s for s in after if s not in doomed]


def test_fresh_dataset_gets_one_snapshot_per_counted_period_with_one_stamp():
    now = datetime(2026, 11, 29, 1, 7, 3, tzinfo=UTC)
    pol = policy(hourly=36, daily=30, weekly=0, monthly=3, yearly=0)
    taken, doomed, after = take(pol, [], now)
    assert [s.name for s in taken] == [
        "autosnap_2026-11-29_01:07:03_hourly",
        "autosnap_2026-11-29_01:07:03_daily",
        "autosnap_2026-11-29_01:07:03_monthly",
    ]
    assert doomed == []
    assert take(pol, after, now + timedelta(seconds=5))[:2] == ([], [])


def test_schedule_follows_sanoid_keys():
    pol = policy(hourly_min=15, daily_hour=2, daily_min=30, weekly_wday=0, monthly_mday=31, yearly_mon=3)
    now = datetime(2026, 3, 1, 2, 10, tzinfo=UTC)  # a Sunday
    assert last_scheduled(pol, "hourly", now) == datetime(2026, 3, 1, 1, 15, tzinfo=UTC)
    assert last_scheduled(pol, "daily", now) == datetime(2026, 2, 28, 2, 30, tzinfo=UTC)
    assert last_scheduled(pol, "weekly", now) == datetime(2026, 2, 22, 23, 30, tzinfo=UTC)
    assert last_scheduled(pol, "monthly", now) == datetime(2026, 2, 28, 0, 0, tzinfo=UTC)  # 31 clamped
    assert last_scheduled(pol, "yearly", now) == datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
    assert last_scheduled(pol, "yearly", now.replace(hour=0, minute=0) - timedelta(seconds=1)) == datetime(2025, 3, 1, tzinfo=UTC)
    assert last_scheduled(policy(frequent_period=20), "frequently", now) == datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


def test_missed_runs_are_caught_up_once():
    pol = policy(hourly=24, daily=7, monthly=0)
    old = datetime(2026, 11, 20, 0, 0, 5, tzinfo=UTC)
    snaps = [snap("autosnap_2026-11-20_00:00:05_hourly", old), snap("autosnap_2026-11-20_00:00:05_daily", old)]
    now = datetime(2026, 11, 29, 12, 30, tzinfo=UTC)
    taken, _, after = take(pol, snaps, now)
    assert [parse_snapname(s.name).period for s in taken] == ["hourly", "daily"]
    assert due_periods(pol, after, now + timedelta(minutes=20)) == []


def test_names_not_ours_and_held_snapshots_survive_whatever_the_counts():
    base = datetime(2026, 1, 1, tzinfo=UTC)
    snaps = [
        snap("manual-1", base),
        snap("autosnap-foo", base),
        snap("autosnap_2026-01-01_00:00:00_hourly-extra", base),
        snap("autosnap_2026-01-01_00:00:00_hourly", base, userrefs=1),
        snap("autosnap_2026-01-01_01:00:00_hourly", base + timedelta(hours=1)),
        snap("autosnap_2026-01-01_01:00:00_daily", base + timedelta(hours=1), dataset="rpool/other"),
    ]
    later = base + timedelta(hours=2)
    assert prune_set(policy(hourly=0, daily=0, monthly=0), snaps, later) == [snaps[4]]
    assert prune_set(policy(hourly=0, autoprune=False), snaps, later) == []


def test_keeps_newest_by_creation_not_by_name():
    base = datetime(2026, 1, 1, tzinfo=UTC)
    # a snapshot named in local time can sort differently from its creation
    early = snap("autosnap_2026-01-01_09:00:00_hourly", base)
    late = snap("autosnap_2026-01-01_08:00:00_hourly", base + timedelta(hours=1))
    assert prune_set(policy(hourly=1), [early, late], base + timedelta(hours=3)) == [early]


def hourlies(*hours_old, now):
    return [snap(f"autosnap_{now - timedelta(hours=h):%Y-%m-%d_%H:%M:%S}_hourly", now - timedelta(hours=h))
            for h in hours_old]


def test_sanoid_rule_older_than_n_periods_and_more_than_n_left():
    now = datetime(2026, 5, 1, 12, 0, 30, tzinfo=UTC)
    pol = policy(hourly=3, daily=0, monthly=0)
    snaps = hourlies(5, 4, 3, 2, 1, now=now)
    # 5 h and 4 h are older than 3 periods and more than 3 remain; 3 h old is exactly 3 periods: kept (strict).
    assert [s.name for s in prune_set(pol, snaps, now)] == [s.name for s in snaps[:2]]
    # fewer than N+1: nothing goes, however old
    assert prune_set(pol, hourlies(100, 50, 20, now=now), now) == []
    # the count condition stops the age condition: 4 snapshots, all old -> only the oldest goes
    assert [s.name for s in prune_set(pol, hourlies(9, 8, 7, 6, now=now), now)] == [hourlies(9, now=now)[0].name]


def test_extra_young_snapshots_never_shorten_how_far_back():
    """A burst of manual cycles (or a catch-up) adds young snapshots: they never push out one younger than
    N periods, where newest-N would destroy everything beyond the burst."""
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    pol = policy(hourly=3, daily=0, monthly=0)
    regular = hourlies(3, 2, 1, now=now)
    burst = [snap(f"autosnap_2026-05-01_11:{m:02d}:00_hourly", now - timedelta(minutes=60 - m)) for m in (10, 20, 30)]
    assert prune_set(pol, regular + burst, now) == []
    # an hour later the oldest regular one is past 3 h and more than 3 remain: it goes, the others stay
    assert [s.name for s in prune_set(pol, regular + burst, now + timedelta(hours=1))] == [regular[0].name]


def test_now_is_cut_to_whole_seconds_as_sanoids_time():
    now = datetime(2026, 5, 1, 12, 0, 0, 900000, tzinfo=UTC)
    pol = policy(hourly=1, daily=0, monthly=0)
    snaps = hourlies(1, 0, now=now.replace(microsecond=0))
    assert prune_set(pol, snaps, now) == []  # exactly one period old is not older than one period


def test_period_lengths_are_sanoids():
    from vmsnapd.policy import period_length

    pol = policy(frequent_period=5)
    assert [period_length(pol, p).total_seconds() for p in PERIODS] == [
        300, 3600, 86400, 7 * 86400, 31 * 86400, 365.25 * 86400]


def test_a_held_snapshot_counts_but_is_never_returned():
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    pol = policy(hourly=2, daily=0, monthly=0)
    a, b, c, d = hourlies(9, 8, 1, 0, now=now)
    a = snap(a.name, a.creation, userrefs=1)
    # as sanoid: a and b are chosen (4 > 2, then 3 > 2); a cannot go (held), so only b is destroyed
    assert prune_set(pol, [a, b, c, d], now) == [b]


def test_repeated_local_hour_takes_hourlies_without_name_collision():
    berlin = ZoneInfo("Europe/Berlin")
    pol = policy(hourly=48, daily=0, monthly=0)
    snaps = []
    names = []
    # 2026-10-25: 02:00-03:00 CEST then 02:00-03:00 CET again; a scheduler firing exactly on the hour
    for minutes in range(0, 4 * 60, 60):
        now = datetime(2026, 10, 24, 23, 0, tzinfo=UTC) + timedelta(minutes=minutes)
        taken, _, snaps = take(pol, snaps, now, utc=False, tz=berlin)
        names += [s.name for s in taken]
    assert len(names) == 4 == len(set(names))
    assert "autosnap_2026-10-25_02:00:00_hourly" in names and "autosnap_2026-10-25_02:00:01_hourly" in names


def test_skipped_local_time_falls_forward():
    berlin = ZoneInfo("Europe/Berlin")
    pol = policy(daily_hour=2, daily_min=30)
    # 2026-03-29 02:30 does not exist in Berlin; the daily is due at 03:30 CEST = 01:30 UTC
    assert last_scheduled(pol, "daily", datetime(2026, 3, 29, 1, 45, tzinfo=UTC), berlin) == datetime(
        2026, 3, 29, 1, 30, tzinfo=UTC
    )


def test_prune_defer():
    assert not prune_deferred(policy(prune_defer=0), 5)
    assert prune_deferred(policy(prune_defer=80), 79.5)
    assert not prune_deferred(policy(prune_defer=80), 81)


counts = st.fixed_dictionaries({period: st.integers(0, 4) for period in PERIODS})
instants = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2028, 1, 1), timezones=st.just(UTC)
)


@st.composite
def histories(draw):
    """Snapshots of ours (some held) and of others at random instants, as a host might have."""
    snaps = []
    for creation in draw(st.lists(instants, max_size=25)):
        creation = creation.replace(microsecond=0)
        kind = draw(st.sampled_from(PERIODS + ("manual", "autosnap-foo")))
        name = f"autosnap_{creation:%Y-%m-%d_%H:%M:%S}_{kind}" if kind in PERIODS else f"{kind}-{creation:%s}"
        snaps.append(snap(name, creation, userrefs=draw(st.sampled_from([0, 0, 0, 1]))))
    return list({s.name: s for s in snaps}.values())


@settings(max_examples=150, deadline=None)
@given(keys=counts, history=histories(), now=instants, utc=st.booleans())
def test_passes_are_safe_and_idempotent(keys, history, now, utc):
    pol = policy(**keys)
    now = now.replace(microsecond=0)  # zfs creation has whole seconds
    tz = UTC if utc else ZoneInfo("America/New_York")
    taken, doomed, after = take(pol, history, now, utc=utc, tz=tz)
    names = [s.name for s in history + taken]
    assert len(names) == len(set(names)), "no duplicate names"
    assert all(parse_snapname(s.name) and s.userrefs == 0 for s in doomed), "only our unheld snapshots go"
    for period in PERIODS:
        before = [s for s in history + taken if (p := parse_snapname(s.name)) and p.period == period]
        left = [s for s in after if (p := parse_snapname(s.name)) and p.period == period]
        assert len(left) >= min(keys[period], len(before)), "never fewer than retention allows"
        cutoff = now - keys[period] * period_length(pol, period)
        assert all(s in left for s in before if s.creation >= cutoff), "nothing younger than N periods goes"
        old_unheld = [s for s in left if s.creation < cutoff and s.userrefs == 0]
        held_chosen = sum(1 for s in before if s.userrefs and s.creation < cutoff)
        assert not old_unheld or len(left) <= keys[period] + held_chosen or not pol.autoprune, \
            "an old snapshot stays only while N or fewer remain"
    again = take(pol, after, now, utc=utc, tz=tz)
    assert again[:2] == ([], []), "a second pass right after the first changes nothing"
    back_taken, back_doomed, _ = take(pol, after, now - timedelta(hours=1), utc=utc, tz=tz)
    assert back_doomed == [], "clock going back destroys nothing"
    assert not {s.name for s in back_taken} & {s.name for s in after}, "and takes no duplicate"


def test_next_scheduled_follows_the_schedule_keys():
    from vmsnapd.policy import next_scheduled

    pol = _nps_policy(hourly_min=15, daily_hour=23, daily_min=59, monthly_mday=31)
    now = datetime(2026, 2, 27, 10, 20, tzinfo=UTC)
    assert next_scheduled(pol, "hourly", now) == datetime(2026, 2, 27, 11, 15, tzinfo=UTC)
    assert next_scheduled(pol, "daily", now) == datetime(2026, 2, 27, 23, 59, tzinfo=UTC)
    # monthly_mday 31 in February means its last day
    assert next_scheduled(pol, "monthly", now) == datetime(2026, 2, 28, 0, 0, tzinfo=UTC)
    assert next_scheduled(pol, "yearly", now) == datetime(2027, 1, 1, 0, 0, tzinfo=UTC)
    for period in ("frequently", "hourly", "daily", "weekly", "monthly", "yearly"):
        nxt = next_scheduled(pol, period, now)
        assert nxt > now and last_scheduled(pol, period, nxt) == nxt


def _nps_policy(**keys):
    from vmsnapd.config import DatasetPolicy

    return DatasetPolicy(name="tank/vm", configured_by="tank/vm", **keys)
