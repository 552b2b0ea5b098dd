"""The pure `check` verdict (vmsnapd.monitoring) and its Nagios rendering, parsed by a strict parser."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.nagios_output import parse
from vmsnapd.config import DatasetPolicy
from vmsnapd.monitoring import (
    CheckFacts,
    DatasetFacts,
    Overrides,
    State,
    format_age,
    parse_override,
    plan_check,
    threshold_seconds,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def policy(name="tank/VM/web", **keys):
    return DatasetPolicy(name=name, configured_by=name, **{"hourly": 24, "daily": 7, "monthly": 0, **keys})


def facts(*datasets, **kw):
    return CheckFacts(datasets=list(datasets), configured_tables=kw.pop("tables", 1), **kw)


def fresh(pol, **ages):
    return DatasetFacts(policy=pol, newest={p: NOW - age for p, age in ages.items()})


def test_thresholds_in_sanoids_units():
    assert threshold_seconds(90, "hourly") == 90 * 60  # bare number: one period down
    assert threshold_seconds(28, "daily") == 28 * 3600
    assert threshold_seconds(5, "monthly") == 5 * 7 * 86400  # sanoid's example: monthly_warn = 5 means 5 weeks
    assert threshold_seconds(2, "yearly") == 2 * 31 * 86400
    assert threshold_seconds(30, "frequently") == 30
    assert threshold_seconds("90m", "daily") == 5400 and threshold_seconds("2D", "hourly") == 2 * 86400
    assert threshold_seconds("1y", "yearly") == 365 * 86400
    assert threshold_seconds(0, "hourly") == 0
    with pytest.raises(ValueError):
        threshold_seconds("ninety", "hourly")


def test_defaults_are_sanoids():
    pol = policy()
    assert (pol.hourly_warn, pol.hourly_crit, pol.daily_warn, pol.daily_crit) == ("90m", "360m", "28h", "32h")
    assert (pol.monthly_warn, pol.monthly_crit) == ("32d", "40d")
    assert (pol.weekly_warn, pol.weekly_crit, pol.yearly_warn, pol.frequently_crit) == (0, 0, 0, 0)


@pytest.mark.parametrize("age,state", [
    (timedelta(minutes=80), State.OK),
    (timedelta(minutes=91), State.WARNING),
    (timedelta(hours=6, seconds=1), State.CRITICAL),
])
def test_hourly_age_against_the_defaults(age, state):
    result = plan_check(facts(fresh(policy(), hourly=age, daily=timedelta(hours=1))), NOW)
    assert result.state == state


def test_no_snapshot_is_critical_only_where_crit_is_set():
    assert plan_check(facts(fresh(policy(daily=0))), NOW).state == State.CRITICAL
    quiet = policy(daily=0, hourly_crit=0)
    assert plan_check(facts(fresh(quiet)), NOW).state == State.OK  # as sanoid: no crit, no complaint


def test_zero_turns_a_check_off_and_autosnap_off_is_still_monitored():
    target = policy(autosnap=False, daily=0)  # a replication target: snapshots arrive by zfs receive
    assert plan_check(facts(fresh(target, hourly=timedelta(hours=7))), NOW).state == State.CRITICAL
    off = policy(autosnap=False, daily=0, hourly_warn=0, hourly_crit=0)
    assert plan_check(facts(fresh(off, hourly=timedelta(days=30))), NOW).state == State.OK


def test_overrides_win_over_the_policy():
    data = facts(fresh(policy(daily=0), hourly=timedelta(hours=3)))
    assert plan_check(data, NOW).state == State.WARNING
    assert plan_check(data, NOW, Overrides(warn={"hourly": "4h"})).state == State.OK
    assert plan_check(data, NOW, Overrides(crit={"hourly": 120})).state == State.CRITICAL


def test_missing_dataset_overlay_and_failed_cycle_are_critical():
    ok = fresh(policy(daily=0), hourly=timedelta(minutes=5))
    assert plan_check(facts(ok, missing=["tank/VM/typo"]), NOW).state == State.CRITICAL
    assert plan_check(facts(ok.model_copy(update={"overlays": ["vda: /x.qcow2"], "domain": "web"})),
                      NOW).state == State.CRITICAL
    assert plan_check(facts(ok.model_copy(update={"last_cycle_error": "hook failed"})), NOW).state == State.CRITICAL


def test_unknown_for_an_empty_config_and_unanswered_parts():
    assert plan_check(CheckFacts(), NOW).state == State.UNKNOWN
    ok = fresh(policy(daily=0), hourly=timedelta(minutes=5))
    assert plan_check(facts(ok, problems=["libvirt: down"]), NOW).state == State.UNKNOWN
    # a worse finding wins over UNKNOWN
    assert plan_check(facts(ok, problems=["libvirt: down"], missing=["a/b"]), NOW).state == State.CRITICAL


def test_pool_capacity():
    ok = fresh(policy(daily=0), hourly=timedelta(minutes=5))
    assert plan_check(facts(ok, pools={"tank": 79}), NOW).state == State.OK
    assert plan_check(facts(ok, pools={"tank": 80}), NOW).state == State.WARNING
    assert plan_check(facts(ok, pools={"tank": 95}), NOW).state == State.CRITICAL
    assert plan_check(facts(ok, pools={"tank": 95}), NOW, Overrides(crit={"capacity": 0})).state == State.WARNING


def test_nagios_line_parses_strictly_with_perfdata_per_dataset_and_period():
    web = fresh(policy(), hourly=timedelta(minutes=30), daily=timedelta(hours=2))
    db = fresh(policy("tank/VM/db", daily=0, hourly_warn="2h", hourly_crit=0))
    result = plan_check(facts(web, db, tables=2, pools={"tank": 42}), NOW)
    out = parse(result.nagios() + "\n", int(result.state))
    assert out.text.startswith("VMSNAPD OK - ")
    perf = {p.label: p for p in out.perfdata}
    assert perf["tank/VM/web hourly_age"].value == 1800 and perf["tank/VM/web hourly_age"].uom == "s"
    assert (perf["tank/VM/web hourly_age"].warn, perf["tank/VM/web hourly_age"].crit) == ("5400", "21600")
    assert perf["tank/VM/db hourly_age"].value is None and perf["tank/VM/db hourly_age"].crit == ""
    assert perf["tank capacity"].value == 42 and perf["tank capacity"].uom == "%"


@settings(max_examples=100, deadline=None)
@given(name=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40))
def test_any_message_stays_one_parsable_line(name):
    """Dataset names, errors and domains end up in the text: never a second line or a stray '|'."""
    broken = DatasetFacts(policy=policy(daily=0), last_cycle_error=name + "\n| 'x'=1", overlays=[name], domain=name)
    result = plan_check(facts(broken, missing=[name]), NOW)
    parsed = parse(result.nagios() + "\n", int(result.state))
    assert parsed.long_text == [] and parsed.text.startswith("VMSNAPD CRITICAL - ")


def test_format_age_as_sanoid():
    assert format_age(5) == "5s" and format_age(3600) == "1h 0m 0s" and format_age(90061) == "1d 1h 1m 1s"


def test_parse_override():
    assert parse_override("hourly=2h") == ("hourly", "2h") and parse_override("capacity=85") == ("capacity", 85)
    for bad in ("hourly", "minutely=1", "hourly=abc", "capacity=200"):
        with pytest.raises(ValueError):
            parse_override(bad)


def test_the_parser_is_strict():
    for bad in ("", "no newline", "A | 'x'=1;2;3;4;5;6\n", "A | x=1zz\n", "A | 'x'=1 'x'=2\n", "A | =1\n"):
        with pytest.raises(ValueError):
            parse(bad, 0)
    with pytest.raises(ValueError):
        parse("OK\n", 4)


def test_a_dataset_held_back_by_the_prune_guard_is_a_warning():
    ok = fresh(policy(daily=0), hourly=timedelta(minutes=5))
    result = plan_check(facts(ok.model_copy(update={"prune_held_back": True})), NOW)
    assert result.state == State.WARNING and "once --prune --confirm" in result.summary


def test_a_vm_whose_live_ram_captures_are_unreliable_is_a_warning():
    ok = fresh(policy(daily=0), hourly=timedelta(minutes=5))
    assert plan_check(facts(ok), NOW).state == State.OK
    caveat = "live RAM capture of a TCG guest (domain type 'qemu', no KVM) on QEMU 7.2.22 can miss pages"
    result = plan_check(facts(ok.model_copy(update={"live_caveat": caveat, "domain": "web"})), NOW)
    assert result.state == State.WARNING and "(web): live RAM capture of a TCG guest" in result.summary


def test_a_disk_on_another_tools_overlay_is_a_warning_naming_how_to_merge_it():
    from vmsnapd.overlaynames import libvirt_snapshot_name
    from vmsnapd.ownership import SnapshotRecord, others_overlays

    records = [SnapshotRecord("pre-sanoid", (("vda", "/tank/web/web.pre.qcow2"),), "/save/web.mem"),
               SnapshotRecord("old-merged", (("vda", "/tank/web/web.old.qcow2"),)),  # committed back since
               SnapshotRecord(libvirt_snapshot_name(1795000000), (("vdb", "/tank/web/vdb.qcow2"),)),  # vmsnapd's name
               SnapshotRecord("mine", (("vdc", "/var/lib/vmsnapd/overlay/x.qcow2"),))]  # in overlay_dir: recover's
    sources = [("vda", "/tank/web/web.pre.qcow2"), ("vdb", "/tank/web/vdb.qcow2"),
               ("vdc", "/var/lib/vmsnapd/overlay/x.qcow2"), ("vdd", "/tank/web/web.old.img")]
    (found,) = others_overlays(sources, records, "/var/lib/vmsnapd/overlay")
    assert str(found) == "vda: /tank/web/web.pre.qcow2 (libvirt snapshot pre-sanoid)"

    ok = fresh(policy(daily=0), hourly=timedelta(minutes=5)).model_copy(
        update={"domain": "web", "others_overlays": [found]})
    result = plan_check(facts(ok), NOW)
    assert result.state == State.WARNING
    (finding,) = result.findings
    assert "web runs on an overlay vmsnapd did not make" in finding.text
    assert "virsh blockcommit web vda --active --pivot" in finding.text
