"""The daemon's schedule when the wall clock jumps (trust drill): a clock set back must not stop the passes and
the watchdog pings for the length of the jump (APScheduler 3 sleeps until a run time computed on the wall clock).
The real daemon under libfaketime: tests/integration/test_daemon_clock.py."""
from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from vmsnapd.config import load_config
from vmsnapd.daemon import CLOCK_JUMP_S, Daemon, clock_jump


@pytest.fixture
def daemon(tmp_path):
    config = tmp_path / "vmsnapd.toml"
    config.write_text(f'[daemon]\nstate_dir = "{tmp_path}/state"\n[datasets."tank/a"]\n')
    config.chmod(0o600)
    daemon = Daemon(config, load_config(config))
    daemon.add_jobs(watchdog_usec=2_000_000)
    daemon.scheduler.start(paused=True)  # the jobs are scheduled, none runs
    yield daemon
    daemon.scheduler.shutdown(wait=False)


def test_clock_jump_is_the_wall_clock_beyond_the_monotonic_one():
    assert clock_jump((1000.0, 50.0), (1000.5, 50.5)) == 0
    assert clock_jump((1000.0, 50.0), (1000.0 - 3600 + 0.5, 50.5)) == -3600  # set back an hour
    assert clock_jump((1000.0, 50.0), (1000.0 + 3 * 3600, 50.5)) == pytest.approx(3 * 3600 - 0.5)  # a suspend


def _next_runs(daemon: Daemon) -> dict[str, datetime]:
    return {job.id: job.next_run_time for job in daemon.scheduler.get_jobs()}


def test_a_clock_set_back_puts_the_pass_and_the_watchdog_on_the_new_time(daemon, caplog):
    now = datetime.now(UTC)
    # What the scheduler holds right after the wall clock was set back an hour: run times an hour ahead of it.
    for job in daemon.scheduler.get_jobs():
        job.modify(next_run_time=now + timedelta(hours=1))
    with caplog.at_level(logging.WARNING, logger="vmsnapd.daemon"):
        assert daemon.follow_clock(-3600.0)
    runs = _next_runs(daemon)
    assert now < runs["pass"] <= now + timedelta(seconds=61) and runs["pass"].second == 0, runs
    assert now < runs["watchdog"] <= now + timedelta(seconds=3), runs
    assert "wall clock set back by 60 min" in caplog.text


def test_a_jump_forward_is_logged_and_gives_one_pass_at_the_next_minute(daemon, caplog):
    now = datetime.now(UTC)
    with caplog.at_level(logging.WARNING, logger="vmsnapd.daemon"):
        assert daemon.follow_clock(3 * 3600.0)
    assert now < _next_runs(daemon)["pass"] <= now + timedelta(seconds=61)
    assert "moved forward (set, or the host was suspended) by 3.0 h" in caplog.text


def test_ordinary_jitter_changes_nothing(daemon, caplog):
    before = _next_runs(daemon)
    with caplog.at_level(logging.DEBUG, logger="vmsnapd.daemon"):
        assert not daemon.follow_clock(CLOCK_JUMP_S)
        assert not daemon.follow_clock(-CLOCK_JUMP_S)
    assert _next_runs(daemon) == before and "wall clock" not in caplog.text


def test_a_pass_running_into_the_next_minute_is_info_not_an_apscheduler_warning(daemon, caplog):
    """Measured with the real daemon (a 75 s hook): 'WARNING apscheduler.scheduler: Execution of job … skipped:
    maximum number of running instances reached (1)' at every minute a pass overran — normal life for a long
    pass. Here the real scheduler meets a pass that has not ended at its next run time."""
    import threading
    import time

    release = threading.Event()
    daemon.scheduler.remove_all_jobs()

    def long_pass():
        daemon.pass_started = time.monotonic()
        release.wait(30)

    daemon.scheduler.add_job(long_pass, "interval", seconds=0.2, id="pass", max_instances=1, coalesce=True)
    with caplog.at_level(logging.DEBUG):
        daemon.scheduler.resume()
        deadline = time.monotonic() + 20
        while "still runs" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        release.set()
    assert "this minute's pass is left out" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
