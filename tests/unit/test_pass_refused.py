"""A pass refused outright (the folder check: "pass refused, nothing done") is visible to `check` at once — CRITICAL
with the reason — from what the pass records in state_dir, and cleared by the next pass that runs. Before, only the
snapshot ages showed it, hours later. The real CLI on the lab: tests/integration/test_pass_refused_lab.py."""
from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

from fakehost import make_host
from vmsnapd.actions.folders import FolderCheck
from vmsnapd.actions.passes import run_pass
from vmsnapd.actions.status import REFUSED_FILE, passes_refused
from vmsnapd.monitoring import CheckFacts, State, plan_check

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
REASON = "daemon.overlay_dir = /tank/web/ovl: is inside managed dataset tank/web"


def test_check_is_critical_with_the_reason():
    result = plan_check(CheckFacts(configured_tables=1, passes_refused=[f"passes refused, nothing done: {REASON}"]),
                        NOW)
    assert result.state == State.CRITICAL and REASON in result.summary


@pytest.fixture
def host(tmp_path, monkeypatch):
    host = make_host(tmp_path, domain=None)
    verdict = {"problems": [REASON]}
    monkeypatch.setattr("vmsnapd.actions.passes.check_folders",
                        lambda ctx, survey: FolderCheck(problems=list(verdict["problems"])))
    host.verdict = verdict
    return host


def test_a_refused_pass_is_recorded_and_the_next_pass_that_runs_clears_it(host):
    ctx = host.context()
    report = run_pass(ctx)
    assert report.errors == [f"pass refused, nothing done: {REASON}"] and not host.zfs.snapshots
    (line,) = passes_refused(ctx)
    assert line.startswith("passes refused, nothing done, since 2026-11-29 01:00:00") and REASON in line, line
    assert oct(os.stat(ctx.state_dir / REFUSED_FILE).st_mode & 0o777) == "0o600"

    host.verdict["problems"] = []
    report = run_pass(ctx)
    assert not report.errors and host.zfs.snapshots, report
    assert passes_refused(ctx) == [] and not (ctx.state_dir / REFUSED_FILE).exists()


def test_a_dry_run_neither_records_nor_clears(host):
    assert run_pass(host.context(dry_run=True)).errors and passes_refused(host.context()) == []
    run_pass(host.context())
    host.verdict["problems"] = []
    run_pass(host.context(dry_run=True))
    assert len(passes_refused(host.context())) == 1


def test_a_damaged_record_still_says_a_pass_was_refused(host):
    ctx = host.context()
    ctx.state_dir.mkdir(mode=0o700)
    (ctx.state_dir / REFUSED_FILE).write_text("{not json")
    (line,) = passes_refused(ctx)
    assert line.startswith("a pass was refused, nothing done (its record") and "cannot be read" in line
    (ctx.state_dir / REFUSED_FILE).unlink()
    os.mkfifo(ctx.state_dir / REFUSED_FILE, 0o600)  # never opened: check must not hang on it
    (line,) = passes_refused(ctx)
    assert "cannot be read: not a regular file but a FIFO" in line, line


def test_an_unsafe_state_dir_is_found_by_check_itself(host, tmp_path):
    """No pass can record it (the pass lock refuses the folder first): check applies the same rule, read-only."""
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    ctx = host.context()
    ctx.state_dir.symlink_to(real)
    (line,) = passes_refused(ctx)
    assert line.startswith("every pass is refused, nothing done: daemon.state_dir:") and "symbolic link" in line
