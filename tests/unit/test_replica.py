"""The pure rules of RAM dumps that travel (vmsnapd.replica) and the config keys that go with them."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsnapd.config import ConfigError, parse_config
from vmsnapd.names import InvalidName
from vmsnapd.replica import (dump_dataset, dump_key, nesting_problem, parse_dump_dataset,
                             source_prefixes, to_local)

STAMP = "2026-11-29_01:00:00"


@given(st.text(min_size=1, max_size=80).filter(lambda s: "\0" not in s))
def test_dump_dataset_names_parse_back_and_are_valid(domain):
    try:
        name = dump_dataset("tank/ram", domain, STAMP)
    except InvalidName:
        pytest.fail(f"no dataset name for {domain!r}")
    assert parse_dump_dataset("tank/ram", name) == (dump_key(domain), STAMP)


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_dump_keys_are_injective(a, b):
    if a != b:
        assert dump_key(a) != dump_key(b)


def test_plain_names_stay_readable_others_are_hashed():
    assert dump_key("web-01") == "web-01"
    assert dump_key("win2k16 (test)").startswith("_") and len(dump_key("win2k16 (test)")) == 17
    assert dump_key("_x").startswith("_") and dump_key("_x") != "_x"  # a leading '_' is reserved for hashes


def test_only_direct_children_named_like_dumps_are_ours():
    assert parse_dump_dataset("tank/ram", f"tank/ram/web_{STAMP}") == ("web", STAMP)
    assert parse_dump_dataset("tank/ram", f"tank/ram/x/web_{STAMP}") is None
    assert parse_dump_dataset("tank/ram", "tank/ram/web") is None
    assert parse_dump_dataset("tank/ram", f"tank/rammed/web_{STAMP}") is None


def test_source_map_longest_prefix_wins():
    prefixes = source_prefixes({"b/VM": "rpool/VM", "b/special": "rpool/VM/db", "b/plain": None})
    assert to_local("rpool/VM/web", prefixes) == "b/VM/web"
    assert to_local("rpool/VM", prefixes) == "b/VM"
    assert to_local("rpool/VM/db", prefixes) == "b/special"
    assert to_local("rpool/VM/db/log", prefixes) == "b/special/log"
    assert to_local("rpool/VMx", prefixes) == "rpool/VMx"  # a prefix is a whole component


def test_nesting():
    assert nesting_problem("tank/ram", ["tank/VM"]) is None
    assert "inside" in nesting_problem("tank/VM/ram", ["tank/VM"])
    assert "holds" in nesting_problem("tank", ["tank/VM"])


@pytest.mark.parametrize("text, error", [
    ('[daemon]\nram_dataset = "tank/ram"\nram_dir = "/x"\n', "daemon: ram_dir and ram_dataset exclude each other"),
    ('[daemon]\nram_dataset = "tank"\n', "daemon.ram_dataset: must be a dataset below a pool"),
    ('[daemon]\nram_dataset = "tank/r@m"\n', "daemon.ram_dataset: 'tank/r@m'"),
    ('[daemon]\nram_dataset = "tank/VM/ram"\n[datasets."tank/VM"]\nrecursive = true\n',
     "daemon.ram_dataset: lies inside the configured dataset 'tank/VM'"),
    ('[daemon]\nram_dataset = "tank/ram"\n[datasets."tank/ram/x"]\n', "daemon.ram_dataset: holds"),
    ('[datasets."b/VM"]\nsource = "rpool/V@M"\n', 'datasets."b/VM".source:'),
    ('[templates.t]\nsource = "rpool/VM"\n', "templates.t.source: unknown key"),
])
def test_config_errors(text, error):
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert any(line.startswith(error) for line in info.value.errors), info.value.errors


def test_config_accepts_a_backup_host():
    config = parse_config('[daemon]\nram_dataset = "backup/ram"\n'
                          '[datasets."backup/VM"]\nsource = "rpool/VM"\nautosnap = false\nrecursive = true\n')
    assert config.daemon.ram_dataset == "backup/ram"
    assert config.datasets["backup/VM"].source == "rpool/VM"


def test_replication_lag_is_judged_for_received_datasets_only():
    from datetime import datetime, timedelta, timezone

    from vmsnapd.config import DatasetPolicy
    from vmsnapd.monitoring import CheckFacts, DatasetFacts, Overrides, State, plan_check

    now = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)

    def verdict(autosnap, age, **keys):
        policy = DatasetPolicy(name="b/VM/web", configured_by="b/VM", autosnap=autosnap, hourly=24, daily=0,
                               monthly=0, hourly_warn=0, hourly_crit=0, **keys)
        facts = CheckFacts(configured_tables=1, datasets=[
            DatasetFacts(policy=policy, newest={"hourly": now - age} if age is not None else {})])
        return plan_check(facts, now)

    lagging = verdict(False, timedelta(hours=3), replication_warn="2h", replication_crit="8h")
    assert lagging.state == State.WARNING and "replication lag 3h 0m 0s" in lagging.summary
    assert "'b/VM/web replication_lag'=10800s;7200;28800;0" in lagging.nagios()
    assert verdict(False, timedelta(hours=9), replication_warn="2h", replication_crit="8h").state == State.CRITICAL
    assert verdict(False, None, replication_crit=480).state == State.CRITICAL  # nothing received, crit set
    off = verdict(False, timedelta(days=9))  # thresholds off by default: shown, not judged
    assert off.state == State.OK and "replication_lag'=777600s" in off.nagios()
    assert "replication_lag" not in verdict(True, timedelta(hours=9), replication_warn="2h").nagios()
    facts = verdict(False, timedelta(hours=3))
    assert facts.state == State.OK
    data = CheckFacts(configured_tables=1, datasets=[DatasetFacts(
        policy=DatasetPolicy(name="b/x", configured_by="b/x", autosnap=False, hourly_warn=0, hourly_crit=0,
                             daily=0, monthly=0),
        newest={"hourly": now - timedelta(hours=3)})])
    assert plan_check(data, now, Overrides(warn={"replication": "1h"})).state == State.WARNING
