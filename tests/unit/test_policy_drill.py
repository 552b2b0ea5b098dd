"""Retention counts at their boundaries (trust drill): a count `config check` accepts never makes prune crash.
`yearly = 9999` ("keep them all") put the cutoff before year 1: OverflowError out of prune, a traceback that stopped
the pass's pruning of every dataset. The lab side: tests/integration/test_prune_huge_counts.py."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from vmsnapd.config import DatasetPolicy
from vmsnapd.models import Snapshot
from vmsnapd.names import PERIODS
from vmsnapd.policy import period_length, prune_cutoff, prune_set

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


def policy(**keys) -> DatasetPolicy:
    return DatasetPolicy(name="tank/vm", configured_by="tank/vm", **{"hourly": 0, "daily": 0, "monthly": 0, **keys})


def snaps(period: str, ages: list[timedelta]) -> list[Snapshot]:
    return [Snapshot(dataset="tank/vm", name=f"autosnap_{NOW - age:%Y-%m-%d_%H:%M:%S}_{period}", creation=NOW - age)
            for age in ages]


def test_a_count_beyond_any_date_keeps_them_all():
    history = snaps("yearly", [timedelta(days=400 * n) for n in range(1, 6)])
    assert prune_set(policy(yearly=9999), history, NOW) == []
    assert prune_set(policy(monthly=10**30), snaps("monthly", [timedelta(days=40 * n) for n in range(1, 4)]), NOW) == []
    assert prune_cutoff(NOW, 9999, period_length(policy(), "yearly")) is None


def test_an_ordinary_count_still_prunes():
    history = snaps("yearly", [timedelta(days=400 * n) for n in range(1, 6)])
    assert prune_set(policy(yearly=2), history, NOW) == sorted(history[2:], key=lambda s: s.creation)


@settings(max_examples=200, deadline=None)
@given(period=st.sampled_from(PERIODS), keep=st.integers(0, 2**80),
       ages=st.lists(st.integers(0, 2000 * 365 * 86400), max_size=8, unique=True))
def test_any_count_gives_a_prune_set_and_never_fewer_than_it_keeps(period, keep, ages):
    history = snaps(period, [timedelta(seconds=age) for age in ages])
    doomed = prune_set(policy(**{period: keep}), history, NOW)
    assert len(history) - len(doomed) >= min(keep, len(history))
