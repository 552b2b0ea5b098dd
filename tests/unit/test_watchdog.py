"""The watchdog ping comes from a pass-liveness check: a pass running past its bound stops WATCHDOG=1."""
from __future__ import annotations

import socket
import time

import pytest

from vmsnapd import daemon as daemon_mod
from vmsnapd.config import load_config
from vmsnapd.daemon import Daemon, pass_bound_s


@pytest.fixture
def notify(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))

    def received() -> list[str]:
        out = []
        while True:
            try:
                out.append(sock.recv(4096).decode())
            except BlockingIOError:
                return out

    yield received
    sock.close()


@pytest.fixture
def daemon(tmp_path):
    config = tmp_path / "vmsnapd.toml"
    config.write_text(f'[daemon]\nstate_dir = "{tmp_path}/state"\nhook_timeout = 10\nmax_parallel = 2\n'
                      '[datasets."tank/a"]\n[datasets."tank/b"]\n[datasets."tank/c"]\n')
    config.chmod(0o600)
    return Daemon(config, load_config(config))


def test_bound_grows_with_rounds_of_cycles_and_hook_timeouts(daemon):
    # 3 tables, 2 at once: 2 rounds.
    assert pass_bound_s(daemon.config) == daemon_mod.PASS_BASE_BOUND_S + 2 * (daemon_mod.CYCLE_BOUND_S + 2 * 10)


def test_pings_while_idle_and_during_a_pass_within_its_bound(daemon, notify):
    assert daemon.watchdog_tick()
    daemon.pass_started = time.monotonic()
    assert daemon.watchdog_tick()
    assert notify() == ["WATCHDOG=1", "WATCHDOG=1"]


def test_a_pass_stuck_past_its_bound_stops_the_pings(daemon, notify, caplog):
    daemon.pass_started = time.monotonic() - pass_bound_s(daemon.config) - 1
    assert not daemon.watchdog_tick()
    assert not daemon.watchdog_tick()
    seen = notify()
    assert "WATCHDOG=1" not in seen and seen == ["STATUS=pass stuck, watchdog pings stopped"]  # said once
    assert any("stuck" in r.message and r.levelname == "CRITICAL" for r in caplog.records)


def test_pings_resume_when_the_stuck_pass_ends(daemon, notify, monkeypatch):
    def stuck_then_done(started: float) -> None:
        daemon.pass_started = time.monotonic() - pass_bound_s(daemon.config) - 1
        assert not daemon.watchdog_tick()

    monkeypatch.setattr(daemon, "_one_pass", stuck_then_done)
    daemon.one_pass()
    assert daemon.pass_started is None
    assert daemon.watchdog_tick()
    assert notify()[-1] == "WATCHDOG=1"
