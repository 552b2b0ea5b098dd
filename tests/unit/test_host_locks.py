"""Host-side locks and reloads: one daemon per state_dir (`daemon_lock`, held for the process's life, beside the pass
lock that `once`/`snapshot` share with it), and a reload that cannot move state_dir. The real daemon and CLI:
tests/integration/test_daemon_locks.py."""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from vmsnapd.config import load_config
from vmsnapd.files import UnsafePath
from vmsnapd.lock import DaemonRunning, daemon_lock, pass_lock


@pytest.fixture
def state(tmp_path: Path) -> Path:
    base = tmp_path / "base"
    base.mkdir(mode=0o755)
    return base / "state"


def test_a_second_daemon_lock_is_refused_naming_the_holder(state: Path) -> None:
    with daemon_lock(state):
        path = state / "daemon.lock"
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600 and path.read_text() == f"pid {os.getpid()}\n"
        with pytest.raises(DaemonRunning, match=rf"another vmsnapd daemon \(pid {os.getpid()}\) runs"), \
                daemon_lock(state):
            pass
        with pass_lock(state, wait_s=0):  # once / snapshot beside a running daemon: as before
            pass
    with daemon_lock(state):  # let go with the process (here: the context)
        pass


def test_the_daemon_lock_refuses_a_planted_link(state: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    state.mkdir(mode=0o700)
    (state / "daemon.lock").symlink_to(victim)
    with pytest.raises(UnsafePath), daemon_lock(state):
        pass
    assert victim.read_bytes() == b"precious"


def _config(tmp_path: Path, state_dir: Path, extra: str = "") -> Path:
    path = tmp_path / "vmsnapd.toml"
    path.write_text(f'[daemon]\nstate_dir = "{state_dir}"\n{extra}[datasets."tank/data"]\ndomain = "none"\n')
    path.chmod(0o600)
    return path


def test_a_reload_cannot_move_state_dir(tmp_path: Path, caplog) -> None:
    """The pass lock, the daemon lock, the crash journal and the results live there: a daemon moving them live could
    overlap a `once` holding the old pass lock and forget the journal of a crash. Refused, the running config kept."""
    from vmsnapd.daemon import Daemon

    path = _config(tmp_path, tmp_path / "state")
    old = load_config(path)
    daemon = Daemon(path, old)
    _config(tmp_path, tmp_path / "elsewhere", extra="max_parallel = 3\n")
    with caplog.at_level(logging.ERROR):
        daemon.reload()
    assert daemon.config is old
    assert "restart the service to change state_dir" in caplog.text and str(tmp_path / "elsewhere") in caplog.text
    _config(tmp_path, tmp_path / "state", extra="max_parallel = 3\n")
    daemon.reload()
    assert daemon.config.daemon.max_parallel == 3
