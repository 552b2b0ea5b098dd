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

