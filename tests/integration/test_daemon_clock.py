"""`vmsnapd run` when the host's wall clock is set back (an NTP step, `date -s`): the passes and the watchdog pings
go on at once on the new time, nothing is taken twice or destroyed (trust drill; unit side:
tests/unit/test_daemon_drill.py).

Only the daemon's clock moves: libfaketime with a timestamp file of this test's own (never the shared zfs-fuse clock
file). libfaketime 0.9.10 fails Python's time.sleep (EINVAL) when the monotonic clock is left alone, and hangs
waits with a timeout when it is faked: the monotonic clock stays real (as a real clock step leaves it) and a
sitecustomize gives the daemon a time.sleep on a threading wait; the preload is not passed on to zfs."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
SITECUSTOMIZE = """\
import os, threading, time
def _sleep(seconds):
    if seconds > 0:
        threading.Event().wait(seconds)
time.sleep = _sleep
os.environ.pop("LD_PRELOAD", None)  # the daemon's clock only: zfs and friends run on the real one
"""


def _receive(sock: socket.socket, want: str, timeout: float, seen: list[str]) -> str:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {want!r} from the daemon within {timeout}s; got {seen[-10:]}")
        sock.settimeout(left)
        try:
            message = sock.recv(4096).decode()
        except socket.timeout:
            continue
        seen.append(message)
        if want in message:
            return message


def test_a_clock_set_back_keeps_the_passes_and_the_watchdog_going(lab, dataset, vmsnapd_env):
    if not LIBFAKETIME.exists():
        pytest.skip(f"{LIBFAKETIME} missing (Debian package faketime)")
    env = vmsnapd_env
    env.datasets[dataset.name] = {"hourly": 2, "daily": 0, "monthly": 0, "domain": "none"}
    env.write()
    clock = env.root / "daemon-clock"
    clock.write_text("+0\n")
    site = env.root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    notify_path = env.root / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    log_path = env.root / "daemon.log"
    seen: list[str] = []
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmsnapd", "-c", str(env.config_path), "-v", "run"],
            stdout=log_file, stderr=subprocess.STDOUT,
            env={**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "2000000",
                 "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(clock), "FAKETIME_NO_CACHE": "1",
                 "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                 "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))})
    try:
        assert "1 snapshot(s) taken" in _receive(sock, "STATUS=pass 1:", 60, seen)
        clock.write_text("-10m\n")  # the daemon's wall clock goes back ten minutes, its monotonic clock runs on
        del seen[:]
        # Pings at once (they stopped for the ten minutes before), the next pass at the next minute.
        _receive(sock, "WATCHDOG=1", 15, seen)
        status = _receive(sock, "STATUS=pass 2:", 100, seen)
        assert "0 snapshot(s) taken, 0 destroyed" in status and "0 failure(s)" in status, status
        snaps = lab.zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", dataset.name).split()
        assert len(snaps) == 1, snaps  # the hourly is not due again before the schedule passes it
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
    assert "wall clock set back by 10 min" in log_path.read_text(), log_path.read_text()[-3000:]
