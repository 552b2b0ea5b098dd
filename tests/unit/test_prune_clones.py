"""Pruning a snapshot a clone depends on: ZFS refuses (`snapshot has dependent clones`), vmsnapd keeps it and says which
clone holds it — a warning, as for a held snapshot, not a failure of every pass (`restore --clone` and the state an
in-place restore keeps aside make such clones). Through the real zfs adapter with canned zfs answers, both dialects;
on the lab: tests/integration/test_prune_drill.py."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsnapd.actions.context import Context, Survey
from vmsnapd.actions.prune import prune
from vmsnapd.config import load_config, resolve
from vmsnapd.models import Snapshot
from vmsnapd.names import validate_dataset_name
from vmsnapd.runner import CommandFailed, CommandResult, Runner
from vmsnapd.zfs import OPENZFS, ZFS_FUSE, DatasetInfo, Zfs, ZfsListing

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=timezone.utc)
DS = "tank/vm/web"
CLONE = "tank/vm/web-test"


class CannedZfs(Runner):
    """Answers the dialect probe; a destroy naming `refused` fails as zfs does for a snapshot with a clone."""

    def __init__(self, dialect: str, refused: str, stderr: str):
        super().__init__()
        self.dialect, self.refused, self.stderr = dialect, refused, stderr
        self.destroys: list[str] = []

    def run(self, argv, *, timeout=None, check=True, env=None, input_text=None, cwd=None) -> CommandResult:
        argv = tuple(argv)
        if argv[1:3] == ("list", "-H"):
            if self.dialect == ZFS_FUSE:
                return CommandResult(argv, 2, "", "invalid option 'p'\nusage: ...", 1)
            return CommandResult(argv, 0, "tank\n", "", 1)
        if argv[1] == "get" and "userrefs" in argv:
            return CommandResult(argv, 0, "0\n", "", 1)
        self.destroys.append(argv[-1])
        if self.refused in argv[-1].split("@", 1)[1].split(","):
            raise CommandFailed(argv, "zfs destroy failed", 1, self.stderr)
        return CommandResult(argv, 0, "", "", 1)


def _world(tmp_path, runner: Runner):
    config = tmp_path / "vmsnapd.toml"
    config.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\nram_dir = "{tmp_path / "ram"}"\n'
                      f'overlay_dir = "{tmp_path / "ovl"}"\n[datasets."{DS}"]\nhourly = 1\ndaily = 0\nmonthly = 0\n'
                      'domain = "none"\n')
    config.chmod(0o600)
    cfg = load_config(config)
    listing = ZfsListing(datasets={DS: DatasetInfo(DS, None, NOW - timedelta(days=9))})
    names = []
    for h in (5, 4, 3, 1):
        at = NOW - timedelta(hours=h)
        names.append(f"autosnap_{at:%Y-%m-%d_%H:%M:%S}_hourly")
        listing.snapshots.append(Snapshot(dataset=DS, name=names[-1], creation=at))
    ctx = Context(config=cfg, config_path=config, runner=runner, zfs=Zfs(runner), now=lambda: NOW)
    return ctx, Survey(listing=listing, policies=resolve(cfg, [DS])), names


@pytest.mark.parametrize("dialect", [ZFS_FUSE, OPENZFS])
def test_a_cloned_snapshot_is_kept_with_its_clone_named_and_the_others_go(tmp_path, dialect):
    runner = CannedZfs(dialect, "", "")
    ctx, survey, names = _world(tmp_path, runner)
    runner.refused = names[1]
    runner.stderr = (f"cannot destroy '{DS}@{names[1]}': snapshot has dependent clones\n"
                     f"use '-R' to destroy the following datasets:\n{CLONE}\n")
    report = prune(ctx, survey)
    (outcome,) = report.outcomes
    assert outcome.ok and not report.failed, outcome
    assert outcome.snapshots == [f"{DS}@{names[0]}", f"{DS}@{names[2]}"]
    assert outcome.kept == [f"{DS}@{names[1]}"]
    assert outcome.warnings == [f"kept {DS}@{names[1]}: {CLONE} depends on it; it goes once that is destroyed or "
                                "promoted"]


def test_any_other_refusal_is_still_a_failure(tmp_path):
    runner = CannedZfs(ZFS_FUSE, "", "")
    ctx, survey, names = _world(tmp_path, runner)
    runner.refused, runner.stderr = names[0], "cannot destroy: I/O error\n"
    (outcome,) = prune(ctx, survey).outcomes
    assert not outcome.ok and "I/O error" in outcome.error and outcome.kept == [f"{DS}@{names[0]}"]
    assert len(outcome.snapshots) == 2


def test_dependents_are_read_from_both_dialects_answers():
    from vmsnapd.zfs import dependents_named

    text = ("cannot destroy 'tank/a@s': snapshot has dependent clones\nuse '-R' to destroy the following datasets:\n"
            "tank/a-test\ntank/VM/web.vmsnapd-replaced-20261130T010203\n")
    assert dependents_named(text) == ["tank/a-test", "tank/VM/web.vmsnapd-replaced-20261130T010203"]
    assert dependents_named("cannot destroy 'tank/a@s': snapshot has dependent clones\n") == []


@given(st.text())
def test_dependents_named_never_fails_and_names_only_valid_datasets(text):
    from vmsnapd.zfs import dependents_named

    for name in dependents_named(text):
        assert validate_dataset_name(name) == name
