"""Property-based tests of every parser of another program's output: zfs, zpool, qemu-img.

Whatever they print, the outcome is a result or the module's typed error (ZfsError, HypervisorError), never
another exception; odd output about one dataset fails that dataset only. Round-trip tests make sure the
parsers still read well-formed output completely (a parser refusing everything would pass the first kind).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmsnapd.hvtypes import HypervisorError
from vmsnapd.qemuimg import parse_backing
from vmsnapd.runner import CommandResult, Runner
from vmsnapd.zfs import ZfsError, ZfsListing, ZfsOutputError, Zfs, parse_capacity, parse_tree

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = ["tank", "tank/vm", "tank/vm/a b", "tank/vm@autosnap_2026-11-29_01:00:00_hourly", "tank/vm@x",
         "tank/vm/web@y", "-r", "tank//x", "tank/x@", "@x", "tank/\ufffd", "", "tank/vm#bookmark", "a@b@c"]
PROPS = ["type", "creation", "userrefs", "mountpoint", "mounted", "used", ""]
VALUES = ["filesystem", "snapshot", "volume", "bookmark", "-", "", "0", "1", "1700000000", "-5", "1.5", "²",
          "99999999999999999999999", "1e9", "yes", "no", "/tank/vm", "none", "legacy", " 17 ", "\ufffd"]
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


def line():
    fields = st.lists(st.sampled_from(NAMES) | st.sampled_from(PROPS) | st.sampled_from(VALUES) | text,
                      min_size=0, max_size=5)
    return st.tuples(fields, st.sampled_from(["\t", "\t\t", " ", "\t \t"])).map(lambda t: t[1].join(t[0]))


def well_formed_line():
    return st.tuples(st.sampled_from(NAMES), st.sampled_from(PROPS), st.sampled_from(VALUES)).map("\t".join)


zfs_output = st.lists(line() | well_formed_line(), max_size=30).map("\n".join) | text


def check_listing(listing: ZfsListing) -> None:
    assert isinstance(listing, ZfsListing)
    for name, info in listing.datasets.items():
        assert info.name == name and "@" not in name and name not in listing.unreadable
        assert info.creation.tzinfo is not None
    for snap in listing.snapshots:
        assert snap.dataset not in listing.unreadable and snap.userrefs >= 0
    assert listing.snapshots == sorted(listing.snapshots, key=lambda s: (s.dataset, s.creation))
    assert all(isinstance(why, str) and why for why in listing.unreadable.values())


@FUZZ
@given(out=zfs_output)
def test_parse_tree_never_raises(out):
    check_listing(parse_tree(out))


@FUZZ
@given(out=text | st.lists(st.sampled_from(["tank", "tank/vm", "42%", "-", "100%", "101%", "7", "", "\t"])
                           | text, max_size=4).map("\t".join),
       pool=st.sampled_from(["tank", "rpool"]))
def test_parse_capacity_gives_a_percentage_or_a_zfs_error(out, pool):
    try:
        percent = parse_capacity(out, pool)
    except ZfsOutputError as exc:
        assert exc.target == pool and str(exc)
        return
    assert 0 <= percent <= 100


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | text | st.sampled_from(["/base.img", "qcow2", "raw"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["full-backing-filename", "backing-filename", "backing-filename-format", "format"]) | text,
        inner, max_size=4),
    max_leaves=8,
)


@FUZZ
@given(out=json_values.map(json.dumps) | text | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
def test_parse_backing_gives_a_path_or_a_hypervisor_error(out):
    try:
        base, fmt = parse_backing(out, "/overlays/x.qcow2")
    except HypervisorError as exc:
        assert str(exc).startswith("/overlays/x.qcow2")
        return
    assert base.startswith("/") and "\0" not in base and fmt


def test_parse_backing_survives_deep_json():
    with pytest.raises(HypervisorError, match="no readable JSON"):
        parse_backing("[" * 100_000 + "]" * 100_000, "/o.qcow2")


# -- round trips: well-formed output is read completely -------------------------------------------------------

component = st.from_regex(r"[A-Za-z0-9_.:-]{1,8}", fullmatch=True).filter(lambda c: c not in (".", ".."))
dataset_names = st.lists(component, min_size=1, max_size=3).map(lambda parts: "tank/" + "/".join(parts))
epochs = st.integers(0, 4_000_000_000)


@FUZZ
@given(datasets=st.dictionaries(dataset_names, st.tuples(epochs, st.sampled_from(["filesystem", "volume"])),
                                max_size=6),
       snaps=st.lists(st.tuples(component.filter(lambda c: not c.startswith("-")), epochs,
                                st.sampled_from(["0", "2", "-"])), max_size=6))
def test_parse_tree_reads_well_formed_output_completely(datasets, snaps):
    lines = []
    for name, (created, kind) in datasets.items():
        lines += [f"{name}\ttype\t{kind}", f"{name}\tcreation\t{created}", f"{name}\tmountpoint\t/m/{name}",
                  f"{name}\tmounted\tyes", f"{name}\tuserrefs\t-"]
        for snap, created_snap, refs in snaps:
            lines += [f"{name}@{snap}\ttype\tsnapshot", f"{name}@{snap}\tcreation\t{created_snap}",
                      f"{name}@{snap}\tuserrefs\t{refs}", f"{name}@{snap}\tmountpoint\t-"]
    listing = parse_tree("\n".join(lines) + "\n")
    assert listing.unreadable == {}
    assert set(listing.datasets) == set(datasets)
    for name, (created, kind) in datasets.items():
        assert listing.datasets[name].creation == datetime.fromtimestamp(created, timezone.utc)
        assert listing.datasets[name].mountpoint == (f"/m/{name}" if kind == "filesystem" else None)
    unique_snaps = {snap: (created, refs) for snap, created, refs in snaps}
    assert len(listing.snapshots) == len(datasets) * len(unique_snaps)


def test_one_bad_dataset_never_hides_the_others():
    out = "\n".join([
        "tank/a\ttype\tfilesystem", "tank/a\tcreation\t-",  # zfs printing '-' for creation
        "tank/b\ttype\tfilesystem", "tank/b\tcreation\t1700000000",
        "tank/b@s1\ttype\tsnapshot", "tank/b@s1\tcreation\t1700000001", "tank/b@s1\tuserrefs\t1",
        "tank/c\ttype\tfilesystem", "tank/c\tcreation\t1700000000",
        "tank/c@s1\ttype\tsnapshot", "tank/c@s1\tcreation\tyesterday",  # one bad snapshot fails its dataset
        "tank/d\ttype\tfilesystem", "tank/d\tcreation\t1700000000", "tank/d\tmountpoint\t/mnt/with\ttab",
        "tank/d\tmounted\tyes",
        "tank/e\ttype",  # a missing column
        "tank/f\ttype\tfilesystem", "tank/f\tcreation\t1700000000", "tank/f\tuserrefs\t\u00b2",
    ])
    listing = parse_tree(out)
    assert sorted(listing.datasets) == ["tank/b", "tank/d", "tank/f"]
    assert listing.datasets["tank/d"].mountpoint == "/mnt/with\ttab"
    assert [(s.dataset, s.name, s.userrefs) for s in listing.snapshots] == [("tank/b", "s1", 1)]
    assert sorted(listing.unreadable) == ["tank/a", "tank/c", "tank/e"]
    assert "'-'" in listing.unreadable["tank/a"] and "yesterday" in listing.unreadable["tank/c"]


@pytest.mark.parametrize("out", ["tank\t-\n", "tank\n", "tank\t42%\textra\n", "other\t42%\n", "tank\t\u00b2%\n",
                                 "tank\t1000%\n", "", "tank\t-1%\n"])
def test_pool_capacity_odd_output_is_a_zfs_error(out):
    with pytest.raises(ZfsOutputError):
        parse_capacity(out, "tank")


def test_pool_capacity_reads_zpool_output():
    assert parse_capacity("tank\t42%\n", "tank") == 42
    assert parse_capacity("tank\t0%", "tank") == 0


# -- through the adapter: whatever the command prints or exits with ---------------------------------------------


class ScriptedRunner(Runner):
    """Fault-path fake: answers every command with the given output (the real one is tested on the lab)."""

    def __init__(self, stdout: str, stderr: str = "", returncode: int = 0):
        super().__init__()
        self.answer = (stdout, stderr, returncode)

    def run(self, argv, *, timeout=None, check=True, env=None, input_text=None, cwd=None):
        stdout, stderr, code = self.answer
        if check and code != 0:
            from vmsnapd.runner import CommandFailed

            raise CommandFailed(argv, "failed", code, stderr)
        return CommandResult(tuple(argv), code, stdout, stderr, 1)


@FUZZ
@given(stdout=zfs_output, stderr=text | st.sampled_from(["cannot open 'tank/x': dataset does not exist",
                                                         "invalid option 'p'"]),
       code=st.sampled_from([0, 0, 1, 2]))
def test_adapter_reads_give_a_result_or_a_zfs_error(stdout, stderr, code):
    zfs = Zfs(ScriptedRunner(stdout, stderr, code))
    for read in (lambda: check_listing(zfs.list_tree(["tank/x", "tank"])),
                 lambda: zfs.pool_capacity("tank"),
                 lambda: zfs.is_held("tank/x", "s"),
                 lambda: zfs.get_property("tank/x", "mountpoint")):
        try:
            read()
        except ZfsError:
            pass


def test_runner_reads_output_that_is_not_utf8():
    result = Runner().run(["printf", "tank/\\377x\\tcreation\\t1\\n"], timeout=10)
    assert "\ufffd" in result.stdout
    assert parse_tree(result.stdout).unreadable  # the odd name fails that dataset, nothing else


@FUZZ
@given(first=st.lists(st.tuples(st.sampled_from(["tank/a", "tank/b", "tank/c"]), st.integers(0, 9)), max_size=12),
       later=st.lists(st.tuples(st.sampled_from(["tank/a", "tank/b", "tank/d"]), st.integers(0, 9)), max_size=4),
       replace=st.booleans())
def test_snapshots_of_always_matches_a_plain_filter(first, later, replace):
    """The per-dataset index follows the list when a pass replaces it (dry-run planning) or appends to it."""
    import copy

    from vmsnapd.models import Snapshot

    def snap(dataset, n):
        return Snapshot(dataset=dataset, name=f"s{n}", creation=datetime.fromtimestamp(n, timezone.utc))

    listing = ZfsListing(snapshots=[snap(d, n) for d, n in first])
    for dataset in ("tank/a", "tank/d"):
        assert listing.snapshots_of(dataset) == [s for s in listing.snapshots if s.dataset == dataset]
    if replace:
        listing = copy.copy(listing)
        listing.snapshots = listing.snapshots + [snap(d, n) for d, n in later]
    else:
        listing.snapshots.extend(snap(d, n) for d, n in later)
    for dataset in ("tank/a", "tank/b", "tank/c", "tank/d"):
        assert listing.snapshots_of(dataset) == [s for s in listing.snapshots if s.dataset == dataset]
