"""`vmsnapd run`: the daemon. APScheduler runs one pass a minute (plus one at start); signals and
sd_notify tie it to systemd.

- A pass is the same as `vmsnapd once` (recover, take what is due, prune) under the pass lock, so a
  manual `once` or `snapshot` never runs beside it. Taking only what is due makes a pass a minute
  cheap: one `zfs get` listing when nothing is due.
- SIGHUP re-reads the config; an invalid new config is logged and rejected, the old one keeps running. So is one
  that changes `state_dir`: the pass lock, the daemon lock (vmsnapd/lock.py) and the crash journal live there, and
  only a restart moves them (a pass in the new folder could overlap a `once` holding the old pass lock).
- SIGTERM/SIGINT: STOPPING=1, the running pass (if any) finishes, exit 0.
- sd_notify: READY=1 once the scheduler runs (the first pass starts right then), STATUS= after each pass.
- Watchdog: every half WatchdogSec the scheduler runs a liveness check that sends WATCHDOG=1 only while
  no pass has been running longer than `pass_bound_s()` (see there); a wedged scheduler or a stuck pass
  (a libvirt call that never returns, a hung zfs) stops the pings and systemd restarts us, after which
  the start-up `recover` finishes whatever the stuck cycle left.
- Metrics: a MetricsServer on `metrics_listen`; a reload that changes it moves the endpoint, no restart.
- The wall clock set back or forward (an NTP step, `date -s`, a resume from suspend): APScheduler 3 sleeps
  until a next run time it computed on the wall clock, so a clock set back by an hour meant an hour without
  a pass and without a watchdog ping (upstream leaves this to the application: agronholm/apscheduler#351).
  The main loop compares the wall clock with the monotonic one every half second and, on a jump of more than
  CLOCK_JUMP_S, logs it and puts both jobs back on the new time: the next pass comes at the next minute.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from vmsnapd.actions.context import Context
from vmsnapd.actions.passes import run_pass
from vmsnapd.pruneguard import PruneGuard
from vmsnapd.config import Config, ConfigError, load_config
from vmsnapd.files import UnsafePath
from vmsnapd.lock import LockBusy, pass_lock
from vmsnapd.logsetup import NOTICE
from vmsnapd.metrics import Metrics, MetricsServer
from vmsnapd.runner import Runner
from vmsnapd.zfs import Zfs

log = logging.getLogger(__name__)

# A pass waits this long for a manual `once`/`snapshot` holding the lock, then skips this minute.
PASS_LOCK_WAIT_S = 50.0
# Worst case of one VM cycle besides its hooks: RAM save, zfs snapshot, 3 blockcommit attempts of up to
# 300 s each (Hypervisor.block_job_timeout), the runner's 300 s timeout on zfs calls: generous on purpose.
CYCLE_BOUND_S = 1800.0
PASS_BASE_BOUND_S = 1800.0  # recover, surveys and pruning
# A wall-clock step larger than this (beyond the monotonic clock's progress) reschedules the jobs. NTP slews
# small errors; a step of seconds is an NTP step, an admin's `date -s` or a resume from suspend.
CLOCK_JUMP_S = 5.0


def pass_bound_s(config: Config) -> float:
    """How long a pass may run before the watchdog calls it stuck: PASS_BASE_BOUND_S plus, per round of
    `max_parallel` cycles over the configured dataset tables, CYCLE_BOUND_S and two hook timeouts
    (pre and post). Slow is fine; only a pass that cannot be making progress stops the pings."""
    rounds = -(-max(len(config.datasets), 1) // config.daemon.max_parallel)
    return PASS_BASE_BOUND_S + rounds * (CYCLE_BOUND_S + 2 * config.daemon.hook_timeout)


def clock_jump(before: tuple[float, float], after: tuple[float, float]) -> float:
    """How far the wall clock moved beyond the monotonic clock between two (wall, monotonic) readings, in
    seconds: 0 when it just ran, negative when it was set back, the time asleep after a suspend (Linux's
    CLOCK_MONOTONIC stands still while suspended)."""
    return (after[0] - before[0]) - (after[1] - before[1])


def _pass_trigger() -> CronTrigger:
    """A pass every minute at second 0 (UTC: a wall-clock minute in any zone)."""
    return CronTrigger(second=0, timezone="UTC")


def _span(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


class _NoOverrunWarning(logging.Filter):
    """APScheduler warns "Execution of job … skipped: maximum number of running instances reached" at every
    minute a pass is still running: normal life for a long pass (many VMs, big RAM dumps), not a problem, so not
    a WARNING in the journal. The daemon says it itself, at INFO (Daemon.pass_overran)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances" not in str(record.msg)


_NO_OVERRUN_WARNING = _NoOverrunWarning()  # one instance: adding it again (another Daemon) is a no-op


def sd_notify(message: str) -> bool:
    """Send one sd_notify datagram; False when not under systemd (no NOTIFY_SOCKET)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as exc:
            log.debug("sd_notify %r failed: %s", message, exc)
            return False
    return True


class Daemon:
    def __init__(self, config_path: Path, config: Config):
        self.config_path = config_path
        self.config = config
        self.stop = threading.Event()
        self.reload_wanted = threading.Event()
        self.scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})
        self.passes = 0
        self.failed_passes = 0
        self.metrics = Metrics()
        self.metrics_server: MetricsServer | None = None
        self.pass_started: float | None = None  # monotonic time the running pass began
        self.stuck_reported = False
        self.watchdog_s: float | None = None  # the watchdog job's interval, when systemd asked for pings
        logging.getLogger("apscheduler.scheduler").addFilter(_NO_OVERRUN_WARNING)
        self.scheduler.add_listener(self.pass_overran, EVENT_JOB_MAX_INSTANCES)

    def context(self) -> Context:
        runner = Runner()
        return Context(config=self.config, config_path=self.config_path, runner=runner, zfs=Zfs(runner))

    def watchdog_tick(self) -> bool:
        """WATCHDOG=1 unless a pass has run past its bound; True when the ping was sent."""
        started = self.pass_started
        if started is not None and time.monotonic() - started > pass_bound_s(self.config):
            if not self.stuck_reported:
                self.stuck_reported = True
                log.critical("pass running for %.0f s, beyond its bound of %.0f s: stuck; watchdog pings stop "
                             "so systemd restarts vmsnapd", time.monotonic() - started, pass_bound_s(self.config))
                sd_notify("STATUS=pass stuck, watchdog pings stopped")
            return False
        return sd_notify("WATCHDOG=1")

    def one_pass(self) -> None:
        self.pass_started = time.monotonic()
        try:
            self._one_pass(self.pass_started)
        finally:
            self.pass_started = None
            self.stuck_reported = False

    def _one_pass(self, started: float) -> None:
        ctx = self.context()
        status = None
        try:
            with pass_lock(ctx.state_dir, wait_s=PASS_LOCK_WAIT_S):
                guard = PruneGuard(ctx.state_dir, active=self.config.daemon.prune_guard)
                report = run_pass(ctx, guard=guard)
                if self.config.daemon.metrics_listen:
                    status = _status_or_none(ctx)
        except LockBusy as exc:
            log.warning("pass skipped: %s", exc)
            return
        except Exception as exc:  # the daemon outlives one broken pass; the next one retries
            if isinstance(exc, UnsafePath):  # e.g. state_dir owned by someone else: a message, no traceback
                log.error("pass refused: %s", exc)
            else:
                log.exception("pass crashed")
            self.failed_passes += 1
            self.metrics.passes.inc()
            self.metrics.pass_failures.inc()
            sd_notify("STATUS=last pass crashed, see the journal")
            return
        finally:
            ctx.close()
        self.passes += 1
        took = sum(len(o.snapshots) for o in report.outcomes if o.action == "take" and o.ok)
        destroyed = sum(len(o.snapshots) for o in report.outcomes if o.action == "prune")
        if report.failed:
            self.failed_passes += 1
            for error in report.errors:
                log.error("pass: %s", error)
        summary = (f"pass {self.passes}: {took} snapshot(s) taken, {destroyed} destroyed, "
                   f"{len(report.dumps_deleted)} RAM dump(s) deleted, {report.failed} failure(s) "
                   f"in {int((time.monotonic() - started) * 1000)} ms")
        log.log(logging.WARNING if report.failed else NOTICE if took or destroyed else logging.INFO, summary)
        self.metrics.observe_report(report, time.time())
        if status is not None:
            self.metrics.set_status(status)
        sd_notify(f"STATUS={summary}")

    def reload(self) -> None:
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload rejected, the running config stays in force:\n%s", exc)
            sd_notify("STATUS=reload rejected: invalid config (see the journal)")
            return
        except Exception:  # a SIGHUP must never kill the daemon, whatever the file holds
            log.exception("reload failed, the running config stays in force")
            sd_notify("STATUS=reload failed (see the journal)")
            return
        if Path(new.daemon.state_dir) != Path(self.config.daemon.state_dir):
            log.error("reload rejected, the running config stays in force: daemon.state_dir changed from %s to %s; "
                      "restart the service to change state_dir (the pass and daemon locks, the crash journal and "
                      "the results live there: moving them live could run a pass beside a `vmsnapd once` holding "
                      "the old pass lock)", self.config.daemon.state_dir, new.daemon.state_dir)
            sd_notify("STATUS=reload rejected: state_dir cannot change without a restart (see the journal)")
            return
        old_listen, self.config = self.config.daemon.metrics_listen, new
        log.log(NOTICE, "config reloaded from %s", self.config_path)
        if new.daemon.metrics_listen != old_listen:
            self.move_metrics(new.daemon.metrics_listen)
        sd_notify("READY=1\nSTATUS=config reloaded")

    def move_metrics(self, listen: str) -> None:
        """Serve the metrics on `listen` (empty: nowhere), without a restart. The new endpoint is bound before
        the old one closes; when that fails (the old one may hold the port under another spelling of the
        address) the old one is closed and the new one tried again, and if that fails too, the old comes back."""
        old, self.metrics_server = self.metrics_server, None
        if old is None:
            if listen:
                self._start_metrics(listen)
            return
        if listen and self._bind_metrics(listen) is None:
            old.close()
            return
        old.close()
        if not listen:
            log.log(NOTICE, "metrics endpoint %s closed", old.listen)
        elif not self._start_metrics(listen, otherwise=f"staying on {old.listen}"):
            self._start_metrics(old.listen)

    def _start_metrics(self, listen: str, otherwise: str = "no metrics endpoint") -> bool:
        """Serve the metrics on `listen`; a failure is logged with what happens instead."""
        exc = self._bind_metrics(listen)
        if exc is not None:
            log.error("metrics: cannot listen on %s: %s; %s", listen, exc, otherwise)
        return exc is None

    def _bind_metrics(self, listen: str) -> OSError | None:
        try:
            self.metrics_server = MetricsServer(self.metrics.registry, listen).start()
        except OSError as exc:
            return exc
        return None

    def add_jobs(self, watchdog_usec: int) -> None:
        """The pass every minute at second 0 (first run: when `run` says) and, under a systemd watchdog, the
        liveness check every half WatchdogSec."""
        if watchdog_usec:
            self.watchdog_s = max(watchdog_usec / 2e6, 0.5)
            self.scheduler.add_job(self.watchdog_tick, self._watchdog_trigger(), id="watchdog", max_instances=1)
        self.scheduler.add_job(self.one_pass, _pass_trigger(), id="pass", misfire_grace_time=50, next_run_time=None)

    def _watchdog_trigger(self) -> IntervalTrigger:
        return IntervalTrigger(seconds=self.watchdog_s)

    def pass_overran(self, event: JobSubmissionEvent) -> None:
        """A minute came while the pass still runs: that minute's pass is left out (the next minute after the
        pass ends runs one; what is due is taken then, once)."""
        started = self.pass_started
        if event.job_id == "pass" and started is not None:
            log.info("the pass started %.0f s ago still runs: this minute's pass is left out",
                     time.monotonic() - started)

    def follow_clock(self, jump: float) -> bool:
        """After a wall-clock jump of more than CLOCK_JUMP_S (see `clock_jump`), log it and put the jobs back on
        the new time (the scheduler would otherwise wait out a clock set back); True when it did."""
        if abs(jump) <= CLOCK_JUMP_S:
            return False
        how = "set back" if jump < 0 else "moved forward (set, or the host was suspended)"
        log.warning("wall clock %s by %s: passes rescheduled on the new time, the next one at the next minute%s",
                    how, _span(jump), " (a snapshot is due again only once the schedule passes the newest one)"
                    if jump < 0 else "")
        self.scheduler.reschedule_job("pass", trigger=_pass_trigger())
        if self.watchdog_s is not None:
            self.scheduler.reschedule_job("watchdog", trigger=self._watchdog_trigger())
        return True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_wanted.set())
        # Every minute at second 0, and once right away (catch-up after downtime, as sanoid --cron).
        self.add_jobs(int(os.environ.get("WATCHDOG_USEC", "0") or 0))
        if self.config.daemon.metrics_listen:
            self._start_metrics(self.config.daemon.metrics_listen)
        self.scheduler.start()
        self.scheduler.get_job("pass").modify(next_run_time=datetime.now(timezone.utc))
        sd_notify("READY=1\nSTATUS=running")
        log.log(NOTICE, "vmsnapd running with %s (%d dataset table(s))", self.config_path, len(self.config.datasets))
        clock = (time.time(), time.monotonic())
        while not self.stop.wait(0.5):
            if self.reload_wanted.is_set():
                self.reload_wanted.clear()
                self.reload()
            now = (time.time(), time.monotonic())
            self.follow_clock(clock_jump(clock, now))
            clock = now
        sd_notify("STOPPING=1")
        log.log(NOTICE, "stopping: waiting for a running pass to finish")
        self.scheduler.shutdown(wait=True)
        if self.metrics_server is not None:
            self.metrics_server.close()
        log.log(NOTICE, "stopped after %d pass(es), %d with failures", self.passes, self.failed_passes)
        return 0


def _status_or_none(ctx: Context):
    """What the metrics endpoint serves until the next pass; a failure here must not fail the pass."""
    from vmsnapd.actions.status import host_status

    try:
        return host_status(ctx)
    except Exception:
        log.exception("metrics: could not survey the host; serving the previous figures")
        return None
