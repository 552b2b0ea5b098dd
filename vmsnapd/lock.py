"""The host's two locks, both flocks on files in `state_dir`, created 0600 without following links:

- the **pass lock** `state_dir/vmsnapd.lock`: one pass at a time (the daemon's, `once`, `snapshot`, `recover`,
  `restore`), waited for a bounded time;
- the **daemon lock** `state_dir/daemon.lock`: one `vmsnapd run` per state_dir, taken at start without waiting and
  held for the process's life (the kernel lets go when the process ends, however it ends). A second daemon would
  only be serialized by the pass lock: every pass run twice, twice the work and the journal's noise.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from vmsnapd.files import ensure_private_directory, open_private_file

log = logging.getLogger(__name__)

PASS_LOCK = "vmsnapd.lock"
DAEMON_LOCK = "daemon.lock"


class LockBusy(Exception):
    """Another vmsnapd pass holds the lock and did not let go in time."""


class DaemonRunning(LockBusy):
    """Another `vmsnapd run` holds the daemon lock of this state_dir."""


def _holder(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()[:80] or "unknown pid"
    except OSError:
        return "unknown pid"


def _open_lock(state_dir: Path, name: str) -> tuple[Path, int]:
    # A lock file in a folder someone else controls could be a link to any file root would then truncate:
    # both raise UnsafePath (an OSError) with the reason.
    ensure_private_directory(state_dir)
    path = state_dir / name
    return path, open_private_file(path)


def _claim(fd: int) -> None:
    """Say who holds the lock (for the message of the one refused)."""
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}\n".encode())


@contextmanager
def pass_lock(state_dir: Path, wait_s: float) -> Iterator[None]:
    path, fd = _open_lock(state_dir, PASS_LOCK)
    try:
        deadline = time.monotonic() + wait_s
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(path)
                if time.monotonic() >= deadline:
                    raise LockBusy(f"another vmsnapd pass ({holder}) holds {path}; gave up after {wait_s:g}s "
                                   "(--lock-wait sets how long to wait)") from None
                if not waiting:
                    log.info("another vmsnapd pass (%s) holds %s; waiting up to %gs", holder, path, wait_s)
                    waiting = True
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        _claim(fd)
        yield
    finally:
        os.close(fd)


@contextmanager
def daemon_lock(state_dir: Path) -> Iterator[None]:
    """Held while the daemon runs; DaemonRunning at once when another daemon holds it."""
    path, fd = _open_lock(state_dir, DAEMON_LOCK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DaemonRunning(f"another vmsnapd daemon ({_holder(path)}) runs with state_dir {state_dir} (it holds "
                                f"{path}): not starting a second one (`once`, `snapshot` and the other commands "
                                "work beside it)") from None
        _claim(fd)
        yield
    finally:
        os.close(fd)
