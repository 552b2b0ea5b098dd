"""The daemon's Prometheus endpoint (`metrics_listen = "HOST:PORT"`): text exposition format 0.0.4.

Served from what the last pass found (no zfs or libvirt call per scrape), so scraping never adds
load on the host or waits for a pass.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from vmsnapd.actions.status import HostStatus

log = logging.getLogger(__name__)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.passes = 0
        self.failed_passes = 0
        self.last_pass_end = 0.0
        self.status: HostStatus | None = None

    def record_pass(self, failed: bool, ended_at: float, status: HostStatus | None) -> None:
        with self._lock:
            self.passes += 1
            self.failed_passes += int(failed)
            self.last_pass_end = ended_at
            if status is not None:
                self.status = status

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP vmsnapd_passes_total Passes (take + prune) run by the daemon.",
                "# TYPE vmsnapd_passes_total counter",
                f"vmsnapd_passes_total {self.passes}",
                "# HELP vmsnapd_pass_failures_total Passes in which at least one target failed.",
                "# TYPE vmsnapd_pass_failures_total counter",
                f"vmsnapd_pass_failures_total {self.failed_passes}",
                "# HELP vmsnapd_last_pass_end_seconds Unix time the last pass ended.",
                "# TYPE vmsnapd_last_pass_end_seconds gauge",
                f"vmsnapd_last_pass_end_seconds {self.last_pass_end:.3f}",
            ]
            status = self.status
        if status is None:
            return "\n".join(lines) + "\n"
        lines += ["# HELP vmsnapd_snapshots Our snapshots per dataset and period.",
                  "# TYPE vmsnapd_snapshots gauge"]
        newest = ["# HELP vmsnapd_newest_snapshot_seconds Creation time of the newest snapshot per period.",
                  "# TYPE vmsnapd_newest_snapshot_seconds gauge"]
        dumps = ["# HELP vmsnapd_ram_dump_bytes Bytes of RAM dumps kept per dataset.",
                 "# TYPE vmsnapd_ram_dump_bytes gauge"]
        ok = ["# HELP vmsnapd_last_cycle_ok 1 when the dataset's last cycle succeeded.",
              "# TYPE vmsnapd_last_cycle_ok gauge"]
        overlay = ["# HELP vmsnapd_disks_on_overlay Disks of the dataset's VM still running on an overlay.",
                   "# TYPE vmsnapd_disks_on_overlay gauge"]
        for entry in status.datasets:
            ds = _label(entry.dataset)
            for period, ps in entry.periods.items():
                lines.append(f'vmsnapd_snapshots{{dataset="{ds}",period="{period}"}} {ps.count}')
                if ps.newest_at is not None:
                    newest.append(f'vmsnapd_newest_snapshot_seconds{{dataset="{ds}",period="{period}"}} '
                                  f"{ps.newest_at.timestamp():.0f}")
            dumps.append(f'vmsnapd_ram_dump_bytes{{dataset="{ds}"}} {entry.ram_bytes}')
            if entry.last_take is not None:
                ok.append(f'vmsnapd_last_cycle_ok{{dataset="{ds}"}} {int(entry.last_take.ok)}')
            overlay.append(f'vmsnapd_disks_on_overlay{{dataset="{ds}"}} {len(entry.overlays)}')
        pools = ["# HELP vmsnapd_pool_capacity_percent Pool capacity in use.",
                 "# TYPE vmsnapd_pool_capacity_percent gauge"]
        pools += [f'vmsnapd_pool_capacity_percent{{pool="{_label(p)}"}} {c}' for p, c in status.pools.items()]
        return "\n".join(lines + newest + dumps + ok + overlay + pools) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def serve(metrics: Metrics, listen: str) -> ThreadingHTTPServer:
    host, _, port = listen.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path != "/metrics":
                self.send_error(404, "only /metrics here")
                return
            body = metrics.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: object) -> None:
            log.debug("metrics: " + fmt, *args)

    server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.warning("metrics on http://%s/metrics", listen)
    return server
