"""The zfs calls of a daemon pass on many datasets (issue 13): one listing for all of them when nothing is due, no
matter how many datasets; a listing again after a take (what it added counts for retention). Through vmsnapd's real
adapters against the oracle's fake `zfs` (tests/sanoid_oracle/fakezfs.py), which logs every call."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from vmsnapd.config import load_config
from vmsnapd.daemon import Daemon

ROOT = Path(__file__).resolve().parents[2]
N = 40


@pytest.fixture
def world(tmp_path, fake_zfs):
    state = fake_zfs
    now = int(time.time())
    stamp = time.strftime("%Y-%m-%d_%H:%M:%S", time.gmtime(now))
    datasets = {"tank": {"creation": 0}, **{f"tank/d{i:02d}": {"creation": 0} for i in range(N)}}
    snaps = [{"name": f"tank/d{i:02d}@autosnap_{stamp}_daily", "creation": now} for i in range(N)]
    state.write_text(json.dumps({"datasets": datasets, "snapshots": snaps}))

    def run_pass(daily: int, monthly: int) -> list[list[str]]:
        log = Path(f"{state}.log")
        log.unlink(missing_ok=True)
        config = tmp_path / "vmsnapd.toml"
        config.write_text(
            f'[daemon]\nstate_dir = "{tmp_path / "state"}"\nram_dir = "{tmp_path / "ram"}"\n'
            f'overlay_dir = "{tmp_path / "ovl"}"\n'
            'libvirt_uri = "qemu:///system?socket=/nonexistent/libvirt-sock"\n'
            + "".join(f'[datasets."tank/d{i:02d}"]\nhourly = 0\ndaily = {daily}\nmonthly = {monthly}\n'
                      'domain = "none"\n' for i in range(N)))
        config.chmod(0o600)
        Daemon(config, load_config(config)).one_pass()
        return [json.loads(line) if line.startswith("[") else line.split() for line in log.read_text().splitlines()]

    return run_pass


def _listings(calls: list[list[str]]) -> list[list[str]]:
    return [c for c in calls if c[:1] == ["get"] and "-r" in c]


def test_nothing_due_is_one_listing_call_for_all_datasets(world):
    calls = world(daily=1, monthly=0)
    listings = _listings(calls)
    assert len(listings) == 1 and sum(1 for a in listings[0] if a.startswith("tank/d")) == N, calls
    assert not [c for c in calls if c[:1] in (["snapshot"], ["destroy"])], calls


def test_a_take_lists_again_before_pruning(world):
    calls = world(daily=1, monthly=1)  # every dataset's monthly is due
    assert len([c for c in calls if c[:1] == ["snapshot"]]) == N
    assert len(_listings(calls)) == 2, calls
