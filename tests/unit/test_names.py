from datetime import datetime

import pytest

from vmsnapd.names import (
    PERIODS,
    InvalidName,
    ParsedName,
    format_snapname,
    parse_snapname,
    validate_dataset_name,
    validate_domain_name,
    validate_snapshot_name,
)


@pytest.mark.parametrize("name", ["rpool", "rpool/VM", "tank/vm-1/disk_0.img:a", "rpool/My VMs/web 1", "a" * 255])
def test_dataset_names_zfs_accepts(name):
    assert validate_dataset_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "-r", "rpool/-x/../y", "rpool//VM", "rpool/VM/", "/rpool", "rpool/./x", "rpool/..", "rpool@snap",
     "a b/x", "rpool/a\nb", "1pool/x", "mirror1/x", "rpool/é", "a" * 256, "rpool/a\tb"],
)
def test_dataset_names_zfs_refuses(name):
    with pytest.raises(InvalidName):
        validate_dataset_name(name)


def test_snapshot_names():
    assert validate_snapshot_name("autosnap_2026-11-29_01:00:00_hourly")
    assert validate_snapshot_name("before upgrade") == "before upgrade"  # ZFS allows spaces
    for bad in ["", "a@b", "a/b", "-x", "a\tb", "a\n"]:
        with pytest.raises(InvalidName):
            validate_snapshot_name(bad)


def test_domain_names():
    assert validate_domain_name("win2k16 (test)") == "win2k16 (test)"
    for bad in ["", "a/b", "-x", "a\nb", "..", "x" * 256]:
        with pytest.raises(InvalidName):
            validate_domain_name(bad)


def test_snapname_round_trip():
    name = format_snapname(datetime(2026, 11, 29, 1, 0, 0), "frequently")
    assert name == "autosnap_2026-11-29_01:00:00_frequently"
    assert parse_snapname(name) == ParsedName(stamp="2026-11-29_01:00:00", period="frequently")
    for period in PERIODS:
        assert parse_snapname(format_snapname(datetime(2026, 1, 2, 3, 4, 5), period)).period == period


@pytest.mark.parametrize(
    "name",
    ["manual-1", "autosnap-foo", "autosnap_2026-11-29_01:00:00_hourly-extra", "autosnap_2026-11-29_01:00:00_minutely",
     "autosnap_2026-13-29_01:00:00_hourly", "autosnap_2026-11-29_01:00_hourly", "xautosnap_2026-11-29_01:00:00_hourly",
     "autosnap_2026-11-29_01:00:00_hourly\n"],
)
def test_names_not_ours(name):
    assert parse_snapname(name) is None


def test_unknown_period_refused():
    with pytest.raises(ValueError):
        format_snapname(datetime(2026, 1, 1), "minutely")
