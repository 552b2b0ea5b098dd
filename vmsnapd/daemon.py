"""`vmsnapd run`: the daemon. APScheduler runs one pass a minute (plus one at start); signals and
sd_notify tie it to systemd.

- A pass is the same as `vmsnapd once` (recover, take what is due, prune) under the pass lock, so a
  manual `once` or `snapshot` never runs beside it. Taking only what is due makes a pass a minute
  cheap: one `zfs get` listing when nothing is due.
- SIGHUP re-reads the config; an invalid new config is logged and rejected, the old one keeps running.
- SIGTERM/SIGINT: STOPPING=1, the running pass (if any) finishes, exit 0.
- sd_notify: READY=1 once the scheduler runs (the first pass starts right then), STATUS= after each pass, WATCHDOG=1 every half
  WatchdogSec from the scheduler (so a wedged scheduler stops the pings and systemd restarts us).
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

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from vmsnapd.actions.context import Context
from vmsnapd.actions.passes import run_pass
from vmsnapd.actions.prune import PruneGuard
from vmsnapd.config import Config, ConfigError, load_config
from vmsnapd.lock import LockBusy, pass_lock
from vmsnapd.metrics import Metrics, serve
from vmsnapd.runner import Runner
from vmsnapd.zfs import Zfs

log = logging.getLogger(__name__)

# A pass waits this long for a manual `once`/`snapshot` holding the lock, then skips this minute.
PASS_LOCK_WAIT_S = 50.0


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
        self.metrics_server = None

    def context(self) -> Context:
        runner = Runner()
        return Context(config=self.config, config_path=self.config_path, runner=runner, zfs=Zfs(runner))

    def one_pass(self) -> None:
        started = time.monotonic()
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
        except Exception:  # noqa: BLE001 — the daemon outlives one broken pass; the next one retries
            log.exception("pass crashed")
            self.failed_passes += 1
            self.metrics.record_pass(True, time.time(), None)
            sd_notify("STATUS=last pass crashed, see the journal")
            return
        finally:
            if ctx._hypervisor is not None:
                ctx._hypervisor.close()
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
        (log.warning if report.failed else log.info)(summary)
        self.metrics.record_pass(bool(report.failed), time.time(), status)
        sd_notify(f"STATUS={summary}")

    def reload(self) -> None:
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload rejected, the running config stays in force:\n%s", exc)
            sd_notify("STATUS=reload rejected: invalid config (see the journal)")
            return
        self.config = new
        log.warning("config reloaded from %s", self.config_path)
        sd_notify("READY=1\nSTATUS=config reloaded")

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_wanted.set())
        watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        if watchdog_usec:
            self.scheduler.add_job(lambda: sd_notify("WATCHDOG=1"), "interval",
                                   seconds=max(watchdog_usec / 2e6, 0.5), id="watchdog")
        # Every minute at second 0, and once right away (catch-up after downtime, as sanoid --cron).
        self.scheduler.add_job(self.one_pass, CronTrigger(second=0, timezone="UTC"), id="pass",
                               misfire_grace_time=50, next_run_time=None)
        if self.config.daemon.metrics_listen:
            self.metrics_server = serve(self.metrics, self.config.daemon.metrics_listen)
        self.scheduler.start()
        self.scheduler.get_job("pass").modify(next_run_time=datetime.now(timezone.utc))
        sd_notify("READY=1\nSTATUS=running")
        log.warning("vmsnapd running with %s (%d dataset table(s))", self.config_path, len(self.config.datasets))
        while not self.stop.wait(0.5):
            if self.reload_wanted.is_set():
                self.reload_wanted.clear()
                self.reload()
        sd_notify("STOPPING=1")
        log.warning("stopping: waiting for a running pass to finish")
        self.scheduler.shutdown(wait=True)
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        log.warning("stopped after %d pass(es), %d with failures", self.passes, self.failed_passes)
        return 0


def _status_or_none(ctx: Context):
    """What the metrics endpoint serves until the next pass; a failure here must not fail the pass."""
    from vmsnapd.actions.status import host_status

    try:
        return host_status(ctx)
    except Exception:  # noqa: BLE001
        log.exception("metrics: could not survey the host; serving the previous figures")
        return None
