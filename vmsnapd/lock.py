"""One pass at a time: an flock on `state_dir/vmsnapd.lock`, waited for a bounded time."""

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


class LockBusy(Exception):
    """Another vmsnapd pass holds the lock and did not let go in time."""


def _holder(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()[:80] or "unknown pid"
    except OSError:
        return "unknown pid"


@contextmanager
def pass_lock(state_dir: Path, wait_s: float) -> Iterator[None]:
    # A lock file in a folder someone else controls could be a link to any file root would then truncate:
    # both raise UnsafePath (an OSError) with the reason.
    ensure_private_directory(state_dir)
    path = state_dir / "vmsnapd.lock"
    fd = open_private_file(path)
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
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)
