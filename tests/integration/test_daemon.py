"""`vmsnapd run` under a stand-in for systemd: sd_notify socket, watchdog, SIGHUP reload, SIGTERM."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.lab]


class Notifications:
    """Everything the daemon sent to NOTIFY_SOCKET, in order."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.seen: list[str] = []

    def wait_for(self, want: str, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while not any(want in m for m in self.seen):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {want!r} from the daemon within {timeout}s; got {self.seen[-20:]}")
            self.sock.settimeout(left)
            try:
                self.seen.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass
        return [m for m in self.seen if want in m]


def test_daemon_notifies_takes_snapshots_rejects_bad_reload_and_stops_cleanly(lab, dataset, vmsnapd_env):
    env = vmsnapd_env
    env.datasets[dataset.name] = {"hourly": 1, "daily": 0, "monthly": 0, "domain": "none"}
    with socket.socket() as probe:  # a free port for the metrics endpoint
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env.daemon["metrics_listen"] = f"127.0.0.1:{port}"
    env.write()
    notify_path = env.root / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    log_path = env.root / "daemon.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmsnapd", "-c", str(env.config_path), "-v", "run"],
            stdout=log_file, stderr=subprocess.STDOUT,
            env={**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "1000000",
                 "JOURNAL_STREAM": "8:1234"})
    notes = Notifications(sock)
    try:
        notes.wait_for("READY=1", 30)
        notes.wait_for("WATCHDOG=1", 10)
        (status,) = notes.wait_for("STATUS=pass 1:", 30)
        assert "1 snapshot(s) taken" in status, status
        snaps = lab.zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", dataset.name).split()
        assert len(snaps) == 1 and snaps[0].endswith("_hourly")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        parsed = {(s.name, s.labels.get("period")): s.value for f in text_string_to_metric_families(metrics)
                  for s in f.samples if s.labels.get("dataset") in (None, dataset.name)}
        assert parsed[("vmsnapd_snapshots", "hourly")] == 1, metrics
        assert parsed[("vmsnapd_passes_total", None)] == 1 and parsed[("vmsnapd_last_cycle_ok", None)] == 1
        assert parsed[("vmsnapd_snapshots_taken_total", None)] == 1 and ("process_cpu_seconds_total", None) in parsed

        # A reload with another metrics_listen (IPv6 loopback) moves the endpoint without a restart.
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            port6 = probe.getsockname()[1]
        env.daemon["metrics_listen"] = f"[::1]:{port6}"
        env.write()
        proc.send_signal(signal.SIGHUP)
        notes.wait_for("STATUS=config reloaded", 10)
        with urllib.request.urlopen(f"http://[::1]:{port6}/metrics", timeout=10) as response:
            assert "vmsnapd_build_info" in response.read().decode()
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)

        env.config_path.write_text(env.config_path.read_text() + "\n[datasets.\"" + dataset.name + "/x\"]\nhourly = \"many\"\n")
        proc.send_signal(signal.SIGHUP)
        notes.wait_for("reload rejected", 10)
        assert proc.poll() is None, "an invalid reload must not stop the daemon"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        notes.wait_for("STOPPING=1", 5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
    log = log_path.read_text()
    assert "reload rejected" in log and "hourly" in log
    # Under systemd (JOURNAL_STREAM set) every line carries a syslog priority for journald.
    lines = [line for line in log.splitlines() if line.strip()]
    assert lines and all(line[:3] in ("<2>", "<3>", "<4>", "<5>", "<6>", "<7>") or line.startswith((" ", "\t", "datasets"))
                         for line in lines), log[:2000]
    assert any(line.startswith("<3>") and "reload rejected" in line for line in lines)
