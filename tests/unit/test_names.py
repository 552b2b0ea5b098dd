from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsnapd.names import (
    MAX_ENCODED_NAME,
    PERIODS,
    InvalidName,
    ParsedName,
    decode_name,
    encode_name,
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


# Names libvirt 9.0 accepted on the lab (`virDomainDefineXML`), and what it refused.
LIBVIRT_ACCEPTS = ["win2k16 (test)", "-web", "..x", ".hidden", "db 1", "vm$(x)", "-odd vm$(touch x)", "a\tb",
                   "é", "a%2Fb", "a\\b", " lead", "trail ", "x" * 250]
LIBVIRT_REFUSES = ["", "a/b", "a\nb", ".", ".."]


@pytest.mark.parametrize("name", LIBVIRT_ACCEPTS)
def test_every_domain_name_libvirt_accepts_is_valid(name):
    assert validate_domain_name(name) == name


@pytest.mark.parametrize("name", LIBVIRT_REFUSES)
def test_domain_names_libvirt_refuses(name):
    with pytest.raises(InvalidName):
        validate_domain_name(name)


@pytest.mark.parametrize("name", ["web", "vlab123x4f-vm", "win2k16 (test)", "db 1", "vm$(x)", "a.b-c_d:e"])
def test_usual_names_encode_to_themselves(name):
    # Dumps and overlays named before the encoding existed keep their names.
    assert encode_name(name) == name


@pytest.mark.parametrize(("name", "encoded"), [
    ("-odd vm$(touch x)", "%2Dodd vm$(touch x)"), ("..x", "%2E.x"), (".hidden", "%2Ehidden"), ("a%b", "a%25b"),
    ("a~b", "a%7Eb"), ("é", "%C3%A9"), ("a\tb", "a%09b"), ("a\\b", "a\\b"),
])
def test_unsafe_characters_are_escaped(name, encoded):
    assert encode_name(name) == encoded
    assert decode_name(encoded) == name


def _assert_safe_file_name(encoded: str) -> None:
    assert encoded and len(encoded) <= MAX_ENCODED_NAME
    assert "/" not in encoded and "\x00" not in encoded
    assert all(0x20 <= ord(c) < 0x7F for c in encoded)  # no control character, nothing but printable ASCII
    assert encoded[0] not in "-."


# Any text libvirt could hold as a name: no '/', newline or NUL, not '.' or '..'.
libvirt_names = st.text(min_size=1, max_size=300).filter(
    lambda n: "/" not in n and "\n" not in n and "\x00" not in n and n not in (".", ".."))


@given(libvirt_names)
@settings(max_examples=500)
def test_encoding_is_safe_and_reversible(name):
    encoded = encode_name(name)
    _assert_safe_file_name(encoded)
    if "~" in encoded:  # a raw '~' only ends an encoding shortened to the limit (an escape is never cut)
        assert len(encoded) >= MAX_ENCODED_NAME - 2
        with pytest.raises(InvalidName):
            decode_name(encoded)
    else:
        assert decode_name(encoded) == name


def test_long_names_are_shortened_with_a_digest():
    a, b = "x" * 250, "x" * 249 + "y"
    assert len(encode_name(a)) == MAX_ENCODED_NAME and "~" in encode_name(a)
    assert encode_name(a) != encode_name(b)
    _assert_safe_file_name(encode_name("é" * 200))


@given(libvirt_names, libvirt_names)
def test_distinct_names_never_share_an_encoding(a, b):
    if a != b:
        assert encode_name(a) != encode_name(b)


@given(st.text(max_size=60))
def test_decoding_anything_gives_a_name_or_invalid_name(text):
    try:
        name = decode_name(text)
    except InvalidName:
        return
    assert encode_name(name) == text


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
