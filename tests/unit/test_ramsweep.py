"""The RAM sweep rule (vmsnapd.ramsweep, docs/pruning.md "The RAM dump rule"), pure: tables of dumps, live
snapshots, listed datasets and ram_keep per dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsnapd.ramsweep import plan_ram_sweep
from vmsnapd.ramstore import DumpDisk, RamDump, RamManifest

S1, S2, S3 = "2026-11-29_01:00:00", "2026-11-29_02:00:00", "2026-11-29_03:00:00"
WIN, DATA, LIN = "rpool/VM/win", "rpool/VM/win-data", "rpool/VM/lin"
LISTED = {WIN, DATA, LIN}


def dump(stamp: str, domain: str = "win", datasets: tuple[str, ...] = (WIN, DATA),
         periods: tuple[str, ...] = ("hourly",), manifest: bool = True) -> RamDump:
    names = [f"autosnap_{stamp}_{p}" for p in periods]
    return RamDump(
        domain=domain, stamp=stamp, path=Path(f"/ram/{domain}/{domain}_{stamp}.mem"),
        manifest_path=Path(f"/ram/{domain}/{domain}_{stamp}.json"), size=10,
        manifest=RamManifest(
            domain=domain, stamp=stamp, datasets=list(datasets), snapshot_names=names,
            domain_xml=f"<domain><name>{domain}</name></domain>",
            disks=[DumpDisk(target="vda", source=f"/{datasets[0]}/vda.img", dataset=datasets[0])],
            method="overlay", live=True, quiesced=False, size=10, raw_size=10, sha256="0" * 64,
            compression="none", created_at="2026-11-29T01:00:00+00:00", vmsnapd_version="test",
        ) if manifest else None,
    )


def alive(*dumps: RamDump) -> set[tuple[str, str]]:
    return {pair for d in dumps for pair in d.manifest.snapshots()}


def gone(plan) -> dict[str, str]:
    """stamp (domain/stamp when several domains) → the first word of the reason."""
    return {d.dump.stamp: d.reason.split(":")[0].split(" ")[0] for d in plan.deletions}


def test_dump_lives_while_any_snapshot_of_its_cycle_lives() -> None:
    d = dump(S1, periods=("hourly", "daily"))
    hourly, daily = (WIN, f"autosnap_{S1}_hourly"), (WIN, f"autosnap_{S1}_daily")
    daily_on_second_dataset = (DATA, f"autosnap_{S1}_daily")
    for live in ({hourly, daily}, {daily}, {daily_on_second_dataset}):
        assert plan_ram_sweep([d], live, LISTED, {}).deletions == []
    [planned] = plan_ram_sweep([d], {(WIN, f"autosnap_{S2}_hourly")}, LISTED, {}).deletions
    assert planned.dump == d and planned.reason.startswith("orphan")
    # The same name on an unrelated dataset does not keep it alive.
    assert gone(plan_ram_sweep([d], {(LIN, f"autosnap_{S1}_hourly")}, LISTED, {})) == {S1: "orphan"}


def test_a_dump_whose_datasets_are_not_all_listed_is_not_judged() -> None:
    d = dump(S1, datasets=(WIN, "other/VM/win-elsewhere"))
    plan = plan_ram_sweep([d], set(), LISTED, {WIN: 1}, force=True)
    assert plan.deletions == [] and plan.not_judged == [d]


def test_dump_without_manifest_needs_force() -> None:
    d = dump(S1, manifest=False)
    assert plan_ram_sweep([d], set(), LISTED, {WIN: 1}).deletions == []
    [planned] = plan_ram_sweep([d], set(), LISTED, {}, force=True).deletions
    assert "forced" in planned.reason


# ram_keep per dataset: (ram_keep of win, ram_keep of win-data, the datasets of each cycle) → what goes.
# A dump stays while ANY dataset of its cycle still wants it (0 or no policy: every cycle; N: the newest N).
RAM_KEEP_TABLE = [
    ({WIN: 1, DATA: 1}, (WIN, DATA), {S1: "ram_keep", S2: "ram_keep"}),
    ({WIN: 2, DATA: 2}, (WIN, DATA), {S1: "ram_keep"}),
    ({WIN: 3, DATA: 3}, (WIN, DATA), {}),
    ({WIN: 1, DATA: 0}, (WIN, DATA), {}),  # win-data keeps every dump while a snapshot lives
    ({WIN: 1}, (WIN, DATA), {}),  # win-data has no policy here: nothing says its dumps may go
    ({WIN: 1, DATA: 2}, (WIN, DATA), {S1: "ram_keep"}),  # the larger count wins: S2 is among win-data's 2
    ({WIN: 2, DATA: 1}, (WIN, DATA), {S1: "ram_keep"}),  # the same, whichever dataset names the domain
    ({WIN: 1, DATA: 0}, (WIN,), {S1: "ram_keep", S2: "ram_keep"}),  # win-data is not in these cycles
    ({}, (WIN, DATA), {}),
]


@pytest.mark.parametrize(("ram_keep", "datasets", "expected"), RAM_KEEP_TABLE)
def test_ram_keep_per_dataset(ram_keep: dict[str, int], datasets: tuple[str, ...], expected: dict) -> None:
    dumps = [dump(s, datasets=datasets) for s in (S2, S1, S3)]
    plan = plan_ram_sweep(dumps, alive(*dumps), LISTED, ram_keep)
    assert gone(plan) == expected
    assert all(f"ram_keep = {max(ram_keep.values())}" in d.reason for d in plan.deletions)


def test_a_dataset_wants_the_newest_cycles_of_its_own_dumps() -> None:
    """A dump of only win (e.g. win-data was excluded then) does not push win-data's newest out, and the
    other way round: each dataset ranks the dumps that name it."""
    only_win = dump(S3, datasets=(WIN,))
    both = [dump(S1), dump(S2)]
    plan = plan_ram_sweep([*both, only_win], alive(*both, only_win), LISTED, {WIN: 1, DATA: 1})
    assert gone(plan) == {S1: "ram_keep"}  # win wants S3, win-data wants S2


def test_domains_are_ranked_apart() -> None:
    wins = [dump(s) for s in (S1, S2)]
    lins = [dump(s, domain="lin", datasets=(LIN,)) for s in (S1, S2)]
    plan = plan_ram_sweep(wins + lins, alive(*wins, *lins), LISTED, {WIN: 1, DATA: 1, LIN: 0})
    assert [(d.dump.domain, d.dump.stamp) for d in plan.deletions] == [("win", S1)]


def test_an_orphan_does_not_count_as_one_of_the_n_kept() -> None:
    dumps = [dump(s) for s in (S1, S2, S3)]
    live = alive(*dumps) - dumps[2].manifest.snapshots()
    assert gone(plan_ram_sweep(dumps, live, LISTED, {WIN: 1, DATA: 1})) == {S1: "ram_keep", S3: "orphan"}


STAMPS = st.sampled_from([S1, S2, S3, "2026-11-29_04:00:00", "2026-11-29_05:00:00"])


@given(stamps=st.sets(STAMPS, min_size=1), keep_win=st.integers(0, 4), keep_data=st.integers(0, 4),
       live_stamps=st.sets(STAMPS))
def test_never_more_deleted_than_the_strictest_dataset_allows(stamps, keep_win, keep_data, live_stamps) -> None:
    """Whatever the counts: an orphan always goes, a dump with a snapshot goes only when neither dataset
    wants it, and the newest max(N) dumps with a snapshot always stay (0 meaning all)."""
    dumps = [dump(s) for s in sorted(stamps)]
    live = alive(*[d for d in dumps if d.stamp in live_stamps])
    plan = plan_ram_sweep(dumps, live, LISTED, {WIN: keep_win, DATA: keep_data})
    deleted = {d.dump.stamp for d in plan.deletions}
    with_snapshot = sorted((d.stamp for d in dumps if d.stamp in live_stamps), reverse=True)
    assert {d.stamp for d in dumps if d.stamp not in live_stamps} <= deleted
    keep = 0 if 0 in (keep_win, keep_data) else max(keep_win, keep_data)
    assert deleted & set(with_snapshot) == (set(with_snapshot[keep:]) if keep else set())
