"""`status` shows, per period, the newest of OUR snapshots by the one rule in vmsnapd.policy.ours_of_period
(newest creation, the name breaking a tie) — the same snapshot `due_periods` and retention look at."""

from __future__ import annotations

from datetime import UTC, datetime

from vmsnapd.actions.context import Survey
from vmsnapd.actions.status import _periods
from vmsnapd.config import DatasetPolicy
from vmsnapd.models import Snapshot
from vmsnapd.policy import ours_of_period
from vmsnapd.zfs import ZfsListing

DS = "tank/VM/web"
AT = datetime(2026, 11, 29, 1, 0, 0, tzinfo=UTC)


def test_the_newest_hourly_is_the_rules_newest_also_on_a_creation_tie() -> None:
    policy = DatasetPolicy(name=DS, configured_by=DS, hourly=24, daily=0, monthly=0)
    # A sanoid DST name and a burst within one second: the same creation, different names; a foreign one newer.
    names = ["autosnap_2026-11-29_01:00:00_hourly", "autosnap_2026-11-29_01:00:00dst_hourly"]
    snaps = [Snapshot(dataset=DS, name=n, creation=AT) for n in reversed(names)]
    snaps.append(Snapshot(dataset=DS, name="manual-later", creation=AT.replace(hour=2)))
    survey = Survey(listing=ZfsListing(snapshots=snaps), policies={DS: policy})
    hourly = _periods(policy, survey, AT.replace(hour=3), UTC)["hourly"]
    [rule_newest, *_] = ours_of_period(policy, snaps, "hourly")
    assert hourly.newest == rule_newest.name == names[1]
    assert hourly.count == 2 and hourly.newest_at == AT
