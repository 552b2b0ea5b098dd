"""The real `vmsnapd run` and its neighbours on one host: a second daemon on the same state_dir is refused at start
(exit 1, the first one's pid named) while `once` runs beside it through the pass lock; a reload that would move
state_dir is refused and the daemon keeps running on its config (docs/operations.md, "One daemon per state_dir")."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab]


def _wait_log(path: Path, want: str, proc: subprocess.Popen, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while want not in (text := path.read_text()):
        assert proc.poll() is None, f"the daemon ended (exit {proc.returncode}) before logging {want!r}:\n{text}"
        assert time.monotonic() < deadline, f"no {want!r} from the daemon within {timeout}s:\n{text}"
        time.sleep(0.2)
    return text


def _second(env, *args: str) -> subprocess.CompletedProcess:
    try:
        return env.run(*args, expect=None, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"vmsnapd {' '.join(args)} beside a running daemon did not end within 60 s")


def test_one_daemon_per_state_dir_and_once_beside_it(lab, dataset, vmsnapd_env):
    env = vmsnapd_env
    env.datasets[dataset.name] = {"hourly": 2, "daily": 0, "monthly": 0, "domain": "none"}
    env.write()
    log_path = env.root / "daemon.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "vmsnapd", "-c", str(env.config_path), "-v", "run"],
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_log(log_path, "pass 1:", proc)
        lock = env.state_dir / "daemon.lock"
        assert stat.S_IMODE(os.lstat(lock).st_mode) == 0o600 and lock.read_text() == f"pid {proc.pid}\n"

        second = _second(env, "run")
        assert second.returncode == 1, second
        assert f"another vmsnapd daemon (pid {proc.pid}) runs with state_dir {env.state_dir}" in second.stderr

        lab.next_second()
        beside = _second(env, "once", "--take")  # through the pass lock, as before
        assert beside.returncode == 0, beside
        assert proc.poll() is None and lock.read_text() == f"pid {proc.pid}\n"

        env.daemon["state_dir"] = str(env.root / "state-moved")
        env.write()
        proc.send_signal(signal.SIGHUP)
        text = _wait_log(log_path, "restart the service to change state_dir", proc)
        assert "reload rejected" in text and "config reloaded" not in text
        assert not (env.root / "state-moved").exists() and proc.poll() is None

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    del env.daemon["state_dir"]
    env.write()
    with open(log_path, "w") as log_file:  # the lock goes with the process: a new daemon starts
        again = subprocess.Popen([sys.executable, "-m", "vmsnapd", "-c", str(env.config_path), "run"],
                                 stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_log(log_path, "vmsnapd running with", again)
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=120) == 0
