"""Destroys at scale (issue 13): OpenZFS batches `ds@a,b,c`, zfs-fuse goes one per call, datasets are pruned side by
side (`zfs_jobs`) with one failing dataset never stopping the others, each dataset's snapshots oldest first,
dry run changing nothing. The zfs-fuse path is proven on the lab (tests/integration/test_prune_parallel.py);
OpenZFS's batch path, which the lab cannot run, is kept tested here with a fake runner and canned answers."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsnapd.actions.context import Context, Survey
from vmsnapd.actions.prune import prune
from vmsnapd.config import load_config, resolve
from vmsnapd.parallel import ordered_map
from vmsnapd.models import Snapshot
from vmsnapd.runner import CommandFailed, CommandResult, Runner
from vmsnapd.zfs import (DESTROY_BATCH_MAX_CHARS, OPENZFS, ZFS_FUSE, DatasetBusy, DatasetInfo, Zfs, ZfsListing,
                         destroy_batches)

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=timezone.utc)


class FakeRunner(Runner):
    """Answers the dialect probe like `dialect`, records every other argv; `fail` maps a destroy target (exactly as
    in argv) to the stderr zfs would print."""

    def __init__(self, dialect: str, fail: dict[str, str] | None = None, delay: float = 0.0):
        super().__init__()
        self.dialect, self.fail, self.delay = dialect, fail or {}, delay
        self.calls: list[tuple[str, ...]] = []
        self.lock = threading.Lock()
        self.running = self.most = 0

    def run(self, argv, *, timeout=None, check=True, env=None, input_text=None, cwd=None) -> CommandResult:
        argv = tuple(argv)
        if argv[1:3] == ("list", "-H"):
            if self.dialect == ZFS_FUSE:
                return CommandResult(argv, 2, "", "invalid option 'p'\nusage: ...", 1)
            return CommandResult(argv, 0, "tank\n", "", 1)
        with self.lock:
            self.calls.append(argv)
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(self.delay)
            if argv[-1] in self.fail:
                raise CommandFailed(argv, "zfs destroy failed", 1, self.fail[argv[-1]])
            return CommandResult(argv, 0, "", "", 1)
        finally:
            with self.lock:
                self.running -= 1


def test_openzfs_destroys_a_datasets_snapshots_in_one_call_oldest_first():
    runner = FakeRunner(OPENZFS)
    assert Zfs(runner).destroy_snapshots("tank/vm", ["s1", "s2", "s3"]) == {}
    assert runner.calls == [("zfs", "destroy", "tank/vm@s1,s2,s3")]


def test_zfs_fuse_takes_one_destroy_per_call():
    runner = FakeRunner(ZFS_FUSE)
    assert Zfs(runner).destroy_snapshots("tank/vm", ["s1", "s2"]) == {}
    assert runner.calls == [("zfs", "destroy", "tank/vm@s1"), ("zfs", "destroy", "tank/vm@s2")]


def test_a_failed_batch_goes_one_by_one_and_only_the_busy_one_stays():
    held = "cannot destroy snapshot tank/vm@s2: dataset is busy"
    runner = FakeRunner(OPENZFS, fail={"tank/vm@s1,s2,s3": held, "tank/vm@s2": held})
    zfs = Zfs(runner)
    zfs.is_held = lambda dataset, snap: True  # a hold: busy for good, no retries
    failed = zfs.destroy_snapshots("tank/vm", ["s1", "s2", "s3"])
    assert list(failed) == ["s2"] and isinstance(failed["s2"], DatasetBusy)
    assert runner.calls == [("zfs", "destroy", "tank/vm@s1,s2,s3"), ("zfs", "destroy", "tank/vm@s1"),
                            ("zfs", "destroy", "tank/vm@s2"), ("zfs", "destroy", "tank/vm@s3")]


def test_long_lists_are_cut_into_batches_within_the_argv_limit():
    names = [f"autosnap_2026-01-{d:02d}_{h:02d}:00:00_hourly" for d in range(1, 29) for h in range(24)]
    runner = FakeRunner(OPENZFS)
    assert Zfs(runner).destroy_snapshots("tank/vm", names) == {}
    assert len(runner.calls) > 1
    assert [n for call in runner.calls for n in call[-1].split("@", 1)[1].split(",")] == names
    assert all(len(call[-1]) <= DESTROY_BATCH_MAX_CHARS for call in runner.calls)


@given(st.lists(st.text("abcxyz0123456789_-:", min_size=1, max_size=300), max_size=200))
def test_batches_keep_every_name_in_order_and_stay_within_the_limit(names):
    batches = destroy_batches("tank/vm", names)
    assert [n for b in batches for n in b] == names
    assert all(b for b in batches)
    assert all(len(b) == 1 or len("tank/vm@" + ",".join(b)) <= DESTROY_BATCH_MAX_CHARS for b in batches)


def test_dry_run_runs_no_destroy():
    runner = FakeRunner(OPENZFS)
    assert Zfs(runner, dry_run=True).destroy_snapshots("tank/vm", ["s1", "s2"]) == {}
    assert runner.calls == []


def test_ordered_map_keeps_order_bounds_threads_and_lets_the_others_finish():
    seen: list[int] = []
    lock = threading.Lock()
    running = [0, 0]

    def work(i: int) -> int:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
            seen.append(i)
        if i == 3:
            raise ValueError("three")
        return i * 10

    assert ordered_map(lambda i: i * 10, range(5), 3) == [0, 10, 20, 30, 40]
    with pytest.raises(ValueError, match="three"):
        ordered_map(work, range(12), 3)
    assert sorted(seen) == list(range(12)) and running[1] <= 3


def _world(tmp_path: Path, runner: FakeRunner, jobs: int, n: int = 6, dry_run: bool = False):
    tmp_path.mkdir(exist_ok=True)
    config = tmp_path / "vmsnapd.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\nram_dir = "{tmp_path / "ram"}"\n'
        f'overlay_dir = "{tmp_path / "ovl"}"\nzfs_jobs = {jobs}\n'
        '[datasets."tank/vm"]\nrecursive = true\nprocess_children_only = true\nhourly = 2\ndaily = 0\n'
        'monthly = 0\ndomain = "none"\n')
    config.chmod(0o600)
    cfg = load_config(config)
    listing = ZfsListing()
    for i in range(n):
        ds = f"tank/vm/d{i}"
        listing.datasets[ds] = DatasetInfo(ds, None, NOW - timedelta(days=9))
        for h in range(8, 0, -1):  # 8 hourlies, 8..1 h old: the 6 older than 2 h go, oldest first
            at = NOW - timedelta(hours=h)
            listing.snapshots.append(Snapshot(dataset=ds, name=f"autosnap_{at:%Y-%m-%d_%H:%M:%S}_hourly",
                                              creation=at))
    listing.datasets["tank/vm"] = DatasetInfo("tank/vm", None, NOW - timedelta(days=9))
    ctx = Context(config=cfg, config_path=config, runner=runner, zfs=Zfs(runner, dry_run=dry_run),
                  dry_run=dry_run, now=lambda: NOW)
    return ctx, Survey(listing=listing, policies=resolve(cfg, sorted(listing.datasets)))


@pytest.mark.parametrize("dialect", [ZFS_FUSE, OPENZFS])
def test_parallel_prune_destroys_what_the_serial_one_does(tmp_path, dialect):
    results = {}
    for jobs in (1, 4):
        runner = FakeRunner(dialect, delay=0.005)
        ctx, survey = _world(tmp_path / str(jobs), runner, jobs)
        report = prune(ctx, survey)
        results[jobs] = (sorted(s for o in report.outcomes for s in o.snapshots), runner)
        per_dataset: dict[str, list[str]] = {}
        for call in runner.calls:
            ds, _, names = call[-1].partition("@")
            per_dataset.setdefault(ds, []).extend(names.split(","))
        for ds, names in per_dataset.items():
            assert names == sorted(names), f"{ds}: not oldest first: {names}"
    assert results[1][0] == results[4][0] and len(results[1][0]) == 6 * 6
    assert results[1][1].most == 1 and 1 < results[4][1].most <= 4


def test_one_failing_dataset_never_stops_the_others(tmp_path):
    runner = FakeRunner(ZFS_FUSE, fail={})
    ctx, survey = _world(tmp_path, runner, 4)
    victim = survey.listing.snapshots_of("tank/vm/d2")[0].full_name
    runner.fail[victim] = "cannot destroy: out of space"
    report = prune(ctx, survey)
    by_target = {o.target: o for o in report.outcomes}
    assert by_target["tank/vm/d2"].error and victim in by_target["tank/vm/d2"].kept
    assert len(by_target["tank/vm/d2"].snapshots) == 5  # the others of that dataset went too
    assert all(len(by_target[f"tank/vm/d{i}"].snapshots) == 6 for i in (0, 1, 3, 4, 5))


def test_dry_run_prune_in_parallel_changes_nothing(tmp_path):
    runner = FakeRunner(OPENZFS)
    ctx, survey = _world(tmp_path, runner, 4, dry_run=True)
    report = prune(ctx, survey)
    assert runner.calls == [] and sum(len(o.snapshots) for o in report.outcomes) == 36
