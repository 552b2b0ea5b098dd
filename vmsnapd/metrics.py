"""Prometheus metrics with prometheus-client: the daemon serves them (`metrics_listen`), `once` writes them
for node_exporter's textfile collector (`metrics_textfile`).

What is counted where:
- events (snapshots taken/destroyed, cycles failed, guest pause, cycle duration, passes) are counted from
  each pass's report (`Metrics.observe_report`); hooks killed at their timeout are counted by hooks.py
  (`hook_killed`), process-wide;
- state (snapshots per period, the newest snapshot's time, RAM dump bytes, last cycle result, disks left on
  an overlay, pool capacity) comes from the last pass's survey (`Metrics.set_status`) through a custom
  collector, so a scrape never runs zfs or libvirt and never waits for a pass.

The HTTP endpoint is not prometheus_client's `start_http_server`: that one spends a thread per connection
with no timeout, so half-open connections pile up threads forever. Here one asyncio thread holds every
connection; each must send its request head within REQUEST_TIMEOUT_S and take the answer within the same
bound, and when MAX_CONNECTIONS are waiting for their head a new one pushes out the one waiting longest
(a real scrape sends its request at once, so half-open connections can never lock it out), and the body
comes from the client's own
`make_wsgi_app` (content negotiation, gzip, `name[]` filters) run on a pool of COLLECT_THREADS threads.
IPv4 and IPv6 (`[::1]:9810`) both work.
"""

from __future__ import annotations

import asyncio
import io
import logging
import platform
import sys
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, Info, PlatformCollector,
                               ProcessCollector, make_wsgi_app, write_to_textfile)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from vmsnapd import __version__
from vmsnapd.config import parse_listen
from vmsnapd.logsetup import NOTICE

if TYPE_CHECKING:
    from vmsnapd.report import PassReport
    from vmsnapd.actions.status import HostStatus

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64  # waiting for their request head at once; a new one closes the longest waiting
REQUEST_TIMEOUT_S = 5.0  # to send the request head, and again to read the answer
MAX_REQUEST_HEAD = 8192  # bytes
COLLECT_THREADS = 2
PAUSE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CYCLE_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

# Counted where the hook is killed (hooks.py), whichever command runs it; every Metrics registers it.
HOOKS_KILLED = Counter("vmsnapd_hooks_killed", "Hooks killed at their timeout, per target.", ["dataset"],
                       registry=None)


def hook_killed(target: str) -> None:
    HOOKS_KILLED.labels(dataset=target).inc()


class Metrics:
    """One registry with vmsnapd's metrics; `process=True` adds process_* and python_info (the daemon's)."""

    def __init__(self, process: bool = True) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.passes = Counter("vmsnapd_passes", "Passes (recover, take, prune) run.", registry=r)
        self.pass_failures = Counter("vmsnapd_pass_failures", "Passes in which something failed.", registry=r)
        self.last_pass_end = Gauge("vmsnapd_last_pass_end_timestamp_seconds", "Unix time the last pass ended.",
                                   registry=r)
        self.taken = Counter("vmsnapd_snapshots_taken", "Snapshots taken, per dataset.", ["dataset"], registry=r)
        self.destroyed = Counter("vmsnapd_snapshots_destroyed", "Snapshots destroyed by pruning, per dataset.",
                                 ["dataset"], registry=r)
        self.cycles_failed = Counter("vmsnapd_cycles_failed", "Snapshot cycles that failed, per dataset.",
                                     ["dataset"], registry=r)
        self.prunes_failed = Counter("vmsnapd_prunes_failed", "Prunes that failed, per dataset.", ["dataset"],
                                     registry=r)
        self.pause = Histogram("vmsnapd_guest_pause_seconds", "How long the guest stood still in a VM cycle.",
                               ["domain"], buckets=PAUSE_BUCKETS, registry=r)
        self.cycle_duration = Histogram("vmsnapd_cycle_duration_seconds", "Wall time of a snapshot cycle.",
                                        ["kind"], buckets=CYCLE_BUCKETS, registry=r)
        Info("vmsnapd_build", "vmsnapd's version.", registry=r).info(
            {"version": __version__, "python": platform.python_version()})
        r.register(HOOKS_KILLED)
        self.state = StatusCollector()
        r.register(self.state)
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)

    def observe_report(self, report: PassReport, ended_at: float) -> None:
        """Count what a pass (or `once`) did; a dry run counts nothing but the pass."""
        self.passes.inc()
        self.last_pass_end.set(ended_at)
        if report.failed:
            self.pass_failures.inc()
        if report.dry_run:
            return
        for o in report.outcomes:
            for full in o.snapshots:
                (self.taken if o.action == "take" else self.destroyed).labels(dataset=full.split("@", 1)[0]).inc()
            if not o.ok:
                failed = self.cycles_failed if o.action == "take" else self.prunes_failed
                for dataset in o.datasets or [o.target]:
                    failed.labels(dataset=dataset).inc()
            if o.action == "take":
                self.cycle_duration.labels(kind="vm" if o.domain else "plain").observe(o.duration_ms / 1000)
                if o.domain and o.pause_ms is not None:
                    self.pause.labels(domain=o.domain).observe(o.pause_ms / 1000)

    def set_status(self, status: HostStatus) -> None:
        self.state.status = status

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def write_textfile(self, path: Path) -> None:
        """Atomically (temporary file + rename in the same folder), for node_exporter's textfile collector."""
        write_to_textfile(str(path), self.registry)


class StatusCollector(Collector):
    """Gauges from the last survey (HostStatus); nothing before the first one."""

    def __init__(self) -> None:
        self.status: HostStatus | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        status = self.status
        if status is None:
            return
        count = GaugeMetricFamily("vmsnapd_snapshots", "Our snapshots per dataset and period.",
                                  labels=["dataset", "period"])
        newest = GaugeMetricFamily("vmsnapd_last_snapshot_timestamp_seconds",
                                   "Creation time of the newest snapshot per dataset and period (last success).",
                                   labels=["dataset", "period"])
        ok = GaugeMetricFamily("vmsnapd_last_cycle_ok", "1 when the dataset's last cycle succeeded.",
                               labels=["dataset"])
        overlay = GaugeMetricFamily("vmsnapd_disks_on_overlay", "Disks of the dataset's VM still on an overlay.",
                                    labels=["dataset"])
        ram: dict[str, int] = {}
        for entry in status.datasets:
            for period, ps in entry.periods.items():
                count.add_metric([entry.dataset, period], ps.count)
                if ps.newest_at is not None:
                    newest.add_metric([entry.dataset, period], ps.newest_at.timestamp())
            if entry.last_take is not None:
                ok.add_metric([entry.dataset], int(entry.last_take.ok))
            overlay.add_metric([entry.dataset], len(entry.overlays))
            if entry.domain:
                ram[entry.domain] = ram.get(entry.domain, 0) + entry.ram_bytes
        dumps = GaugeMetricFamily("vmsnapd_ram_dump_bytes", "Bytes of RAM dumps kept, per domain.", labels=["domain"])
        for domain, size in sorted(ram.items()):
            dumps.add_metric([domain], size)
        pools = GaugeMetricFamily("vmsnapd_pool_capacity_ratio", "Pool capacity in use, 0 to 1.", labels=["pool"])
        for pool, percent in status.pools.items():
            pools.add_metric([pool], percent / 100)
        journal = GaugeMetricFamily("vmsnapd_journal_problems", "Crash-journal records recover cannot finish: "
                                    "unreadable, or a cycle interrupted minutes ago and not recovered (check: "
                                    "CRITICAL).", labels=["kind"])
        journal.add_metric(["unreadable"], len(status.journal_unreadable))
        journal.add_metric(["interrupted"], len(status.interrupted_cycles))
        yield from (count, newest, ok, overlay, dumps, pools, journal)


# -- the HTTP endpoint ----------------------------------------------------------------------------------------


class MetricsServer:
    """Serves `registry` at http://HOST:PORT/metrics from one asyncio thread (see the module doc)."""

    def __init__(self, registry: CollectorRegistry, listen: str):
        self.listen = listen
        self.host, self.port = parse_listen(listen)
        self.app = make_wsgi_app(registry)
        self._waiting: dict[asyncio.StreamWriter, None] = {}  # connections still sending their request head
        self._loop = asyncio.new_event_loop()
        self._pool = ThreadPoolExecutor(max_workers=COLLECT_THREADS, thread_name_prefix="metrics-collect")
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        """Bind (OSError when it cannot) and serve in a daemon thread."""
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, self.port, limit=MAX_REQUEST_HEAD, reuse_address=True))
        except BaseException:
            self._loop.close()
            self._pool.shutdown(wait=False)
            raise
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"metrics {self.listen}", daemon=True)
        self._thread.start()
        log.log(NOTICE, "metrics on http://%s/metrics", self.listen)
        return self

    def close(self) -> None:
        if self._thread is None:
            return

        async def stop() -> None:
            self._server.close()
            await self._server.wait_closed()

        try:
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=REQUEST_TIMEOUT_S * 2)
        except Exception:  # closing for good: the loop goes anyway
            log.debug("metrics server on %s did not close cleanly", self.listen, exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=REQUEST_TIMEOUT_S * 2)
        self._loop.close()
        self._pool.shutdown(wait=False)
        self._thread = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._waiting) >= MAX_CONNECTIONS:  # make room: the connection idle the longest goes
            oldest = next(iter(self._waiting))
            self._waiting.pop(oldest)
            oldest.transport.abort()
        self._waiting[writer] = None
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                return
            finally:
                self._waiting.pop(writer, None)
            status, headers, body = await self._loop.run_in_executor(self._pool, self._respond, head)
            lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers),
                     f"Content-Length: {len(body)}", "Connection: close", "", ""]
            writer.write("\r\n".join(lines).encode("latin-1") + body)
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_S)
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()

    def _respond(self, head: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
        """Run the client's WSGI app for one request head; (status, headers, body)."""
        try:
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, _version = request_line.split(" ")
        except ValueError:
            return "400 Bad Request", [("Content-Type", "text/plain")], b"bad request\n"
        path, _, query = target.partition("?")
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")], b"GET only\n"
        if path not in ("/metrics", "/"):
            return "404 Not Found", [("Content-Type", "text/plain")], b"metrics are at /metrics\n"
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "SCRIPT_NAME": "",
                   "SERVER_NAME": self.host, "SERVER_PORT": str(self.port), "SERVER_PROTOCOL": "HTTP/1.1",
                   "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr, "wsgi.url_scheme": "http"}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                environ["HTTP_" + name.strip().upper().replace("-", "_")] = value.strip()
        answer: dict[str, object] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info=None) -> None:
            answer.update(status=status, headers=headers)

        body = b"".join(_chunks(self.app(environ, start_response)))
        return str(answer["status"]), list(answer["headers"]), b"" if method == "HEAD" else body


def _chunks(result: Iterable[bytes]) -> Iterator[bytes]:
    try:
        yield from result
    finally:
        close = getattr(result, "close", None)
        if close:
            close()
