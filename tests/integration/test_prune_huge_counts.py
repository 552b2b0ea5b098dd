"""A retention count that means "keep them all" (`yearly = 9999`) on the lab (trust drill; pure side:
tests/unit/test_policy_drill.py): `config check` accepted it, then every `once` and daemon pass crashed in prune with
a traceback (OverflowError: the cutoff before year 1), so no dataset was pruned at all. Now that dataset keeps
everything and the others are pruned as usual."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

pytestmark = [pytest.mark.lab]


def test_a_keep_everything_count_prunes_nothing_there_and_the_other_datasets_as_usual(lab, dataset_factory,
                                                                                      vmsnapd_env):
    keep_all, ordinary = dataset_factory(), dataset_factory()
    env = vmsnapd_env
    env.datasets[keep_all.name] = {"hourly": 0, "daily": 0, "monthly": 0, "yearly": 9999, "domain": "none"}
    env.datasets[ordinary.name] = {"hourly": 1, "daily": 0, "monthly": 0, "domain": "none"}
    env.daemon["prune_guard"] = False
    env.write()
    assert "yearly = 9999" in env.run("config", "check").stdout
    when = datetime.now(timezone.utc) - timedelta(hours=3)
    old = f"autosnap_{when:%Y-%m-%d_%H:%M:%S}_hourly"
    with lab.faketime("-3h"):  # really three hours old: zfs-fuse's clock
        lab.snapshot(ordinary, old)
    proc = env.run("once")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert old not in lab.snapshot_names(ordinary), "the other dataset is pruned as usual"
    assert [n.endswith("_hourly") for n in lab.snapshot_names(ordinary)] == [True]
    (yearly,) = lab.snapshot_names(keep_all)
    assert yearly.endswith("_yearly")
    env.run("once")  # and again: nothing of the keep-everything dataset goes, no crash
    assert lab.snapshot_names(keep_all) == [yearly]
