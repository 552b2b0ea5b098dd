"""Prometheus metrics: names and values checked with prometheus_client's own parser, the HTTP endpoint with real
requests (IPv4, IPv6, half-open connections), the textfile writer, and the daemon's reload moving the endpoint."""
from __future__ import annotations

import socket
import urllib.error
import urllib.request
from datetime import datetime, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vmsnapd import metrics as metrics_mod
from vmsnapd.report import PassReport, TargetOutcome
from vmsnapd.actions.status import DatasetStatus, HostStatus, LastResult, PeriodStatus
from vmsnapd.metrics import Metrics, MetricsServer, hook_killed


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def families(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def a_report() -> PassReport:
    return PassReport(outcomes=[
        TargetOutcome(action="take", target="tank/VM/web", domain="web", datasets=["tank/VM/web"],
                      snapshots=["tank/VM/web@autosnap_2026-11-30_01:00:00_hourly",
                                 "tank/VM/web@autosnap_2026-11-30_01:00:00_daily"], duration_ms=4200, pause_ms=85),
        TargetOutcome(action="take", target="tank/data", datasets=["tank/data"], error="zfs said no",
                      duration_ms=30),
        TargetOutcome(action="prune", target="tank/VM/web", datasets=["tank/VM/web"],
                      snapshots=["tank/VM/web@autosnap_2026-11-28_01:00:00_hourly"]),
    ])


def a_status() -> HostStatus:
    at = datetime(2026, 11, 30, 1, 0, tzinfo=timezone.utc)
    return HostStatus(
        datasets=[DatasetStatus(dataset="tank/VM/web", domain="web", vm_state="running", ram_dumps=2,
                                ram_bytes=3 << 20,
                                periods={"hourly": PeriodStatus(kept=24, count=5, newest_at=at, newest="x")},
                                last_take=LastResult(action="take", ok=True, at=at))],
        pools={"tank": 42})


def test_names_types_and_values_parse_with_the_clients_parser():
    m = Metrics()
    m.observe_report(a_report(), ended_at=1_700_000_000.0)
    m.set_status(a_status())
    hook_killed("tank/VM/web")
    text = m.render().decode()
    got = samples(text)
    types = families(text)
    assert got[("vmsnapd_snapshots_taken_total", (("dataset", "tank/VM/web"),))] == 2
    assert got[("vmsnapd_snapshots_destroyed_total", (("dataset", "tank/VM/web"),))] == 1
    assert got[("vmsnapd_cycles_failed_total", (("dataset", "tank/data"),))] == 1
    assert got[("vmsnapd_hooks_killed_total", (("dataset", "tank/VM/web"),))] >= 1
    assert got[("vmsnapd_guest_pause_seconds_count", (("domain", "web"),))] == 1
    assert got[("vmsnapd_guest_pause_seconds_sum", (("domain", "web"),))] == pytest.approx(0.085)
    assert got[("vmsnapd_guest_pause_seconds_bucket", (("domain", "web"), ("le", "0.1")))] == 1
    assert got[("vmsnapd_guest_pause_seconds_bucket", (("domain", "web"), ("le", "0.05")))] == 0
    assert got[("vmsnapd_cycle_duration_seconds_count", (("kind", "vm"),))] == 1
    assert got[("vmsnapd_cycle_duration_seconds_count", (("kind", "plain"),))] == 1
    assert got[("vmsnapd_ram_dump_bytes", (("domain", "web"),))] == 3 << 20
    assert got[("vmsnapd_last_snapshot_timestamp_seconds", (("dataset", "tank/VM/web"), ("period", "hourly")))] == \
        datetime(2026, 11, 30, 1, 0, tzinfo=timezone.utc).timestamp()
    assert got[("vmsnapd_pool_capacity_ratio", (("pool", "tank"),))] == pytest.approx(0.42)
    assert got[("vmsnapd_last_pass_end_timestamp_seconds", ())] == 1_700_000_000.0
    assert got[("vmsnapd_passes_total", ())] == 1 and got[("vmsnapd_pass_failures_total", ())] == 1
    build = [k for k in got if k[0] == "vmsnapd_build_info"]
    assert len(build) == 1 and dict(build[0][1])["version"]
    assert types["vmsnapd_guest_pause_seconds"] == "histogram" and types["vmsnapd_snapshots_taken"] == "counter"
    assert "process_resident_memory_bytes" in text or "process_cpu_seconds_total" in text


def test_a_dry_run_counts_the_pass_but_no_snapshot():
    m = Metrics(process=False)
    report = a_report()
    report.dry_run = True
    m.observe_report(report, ended_at=1.0)
    got = samples(m.render().decode())
    assert not [k for k in got if k[0] == "vmsnapd_snapshots_taken_total"]
    assert got[("vmsnapd_passes_total", ())] == 1


def test_textfile_is_written_atomically_and_parses(tmp_path):
    m = Metrics(process=False)
    m.observe_report(a_report(), ended_at=2.0)
    m.set_status(a_status())
    path = tmp_path / "vmsnapd.prom"
    path.write_text("old content\n")
    m.write_textfile(path)
    text = path.read_text()
    assert "process_" not in text  # a finished cron job's process figures would mislead
    assert samples(text)[("vmsnapd_pool_capacity_ratio", (("pool", "tank"),))] == pytest.approx(0.42)
    assert [p.name for p in tmp_path.iterdir()] == ["vmsnapd.prom"]  # no temporary file left behind


def test_the_server_takes_ipv6_in_brackets_through_the_config_parser():
    # One parser for the setting (vmsnapd.config.parse_listen, fuzzed in tests/unit/test_fuzz_*): what passes
    # `config check` is what the server binds.
    assert MetricsServer(Metrics(process=False).registry, "[::1]:9810").host == "::1"
    with pytest.raises(ValueError):
        MetricsServer(Metrics(process=False).registry, "::1:9810")


def closed_by_server(s: socket.socket) -> bool:
    """True when the server ended the connection (FIN or RST) before our own timeout."""
    s.settimeout(30)
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def free_port(family=socket.AF_INET, host="127.0.0.1") -> int:
    with socket.socket(family) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=20) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


@pytest.fixture
def server():
    started = []

    def start(listen: str, m: Metrics | None = None) -> MetricsServer:
        s = MetricsServer((m or Metrics(process=False)).registry, listen).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


def test_a_real_http_scrape(server):
    port = free_port()
    m = Metrics(process=False)
    m.set_status(a_status())
    server(f"127.0.0.1:{port}", m)
    text = scrape(f"http://127.0.0.1:{port}/metrics")
    assert samples(text)[("vmsnapd_snapshots", (("dataset", "tank/VM/web"), ("period", "hourly")))] == 5
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=10)
    assert err.value.code == 404


def test_ipv6_loopback(server):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    try:
        port = free_port(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no ::1 here")
    server(f"[::1]:{port}")
    assert "vmsnapd_build_info" in scrape(f"http://[::1]:{port}/metrics")


def test_half_open_connections_do_not_stop_a_scrape(server, monkeypatch):
    """More idle connections than the server keeps waiting, each having sent half a request head: a normal
    scrape is still answered, and the idle ones are dropped (oldest first, or at their timeout)."""
    port = free_port()
    server(f"127.0.0.1:{port}")
    idle = []
    try:
        for _ in range(metrics_mod.MAX_CONNECTIONS + 20):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
            idle.append(s)
        assert "vmsnapd_build_info" in scrape(f"http://127.0.0.1:{port}/metrics")
        # The first ones were pushed out to make room: the server closed them.
        assert closed_by_server(idle[0])
    finally:
        for s in idle:
            s.close()


def test_a_connection_that_never_sends_its_request_is_closed_at_the_timeout(server, monkeypatch):
    monkeypatch.setattr(metrics_mod, "REQUEST_TIMEOUT_S", 0.5)
    port = free_port()
    server(f"127.0.0.1:{port}")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /met")
        assert closed_by_server(s)  # not by our 30 s timeout


def test_daemon_reload_moves_the_endpoint(tmp_path):
    from vmsnapd.config import load_config
    from vmsnapd.daemon import Daemon

    old_port, new_port = free_port(), free_port()
    config = tmp_path / "vmsnapd.toml"
    config.write_text(f'[daemon]\nstate_dir = "{tmp_path}/state"\nmetrics_listen = "127.0.0.1:{old_port}"\n')
    config.chmod(0o600)
    daemon = Daemon(config, load_config(config))
    daemon.move_metrics(daemon.config.daemon.metrics_listen)
    try:
        assert "vmsnapd_build_info" in scrape(f"http://127.0.0.1:{old_port}/metrics")
        config.write_text(f'[daemon]\nstate_dir = "{tmp_path}/state"\nmetrics_listen = "127.0.0.1:{new_port}"\n')
        daemon.reload()
        assert "vmsnapd_build_info" in scrape(f"http://127.0.0.1:{new_port}/metrics")
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", old_port), timeout=5).close()
        config.write_text(f'[daemon]\nstate_dir = "{tmp_path}/state"\n')
        daemon.reload()
        assert daemon.metrics_server is None
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", new_port), timeout=5).close()
    finally:
        if daemon.metrics_server is not None:
            daemon.metrics_server.close()


def test_a_busy_port_keeps_the_old_endpoint(tmp_path):
    from vmsnapd.config import load_config
    from vmsnapd.daemon import Daemon

    old_port = free_port()
    config = tmp_path / "vmsnapd.toml"
    config.write_text(f'[daemon]\nstate_dir = "{tmp_path}/state"\nmetrics_listen = "127.0.0.1:{old_port}"\n')
    config.chmod(0o600)
    daemon = Daemon(config, load_config(config))
    daemon.move_metrics(daemon.config.daemon.metrics_listen)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        try:
            daemon.move_metrics(f"127.0.0.1:{busy}")
            assert daemon.metrics_server is not None and daemon.metrics_server.listen == f"127.0.0.1:{old_port}"
            assert "vmsnapd_build_info" in scrape(f"http://127.0.0.1:{old_port}/metrics")
        finally:
            if daemon.metrics_server is not None:
                daemon.metrics_server.close()
