"""Shared bits of the benchmarks: lab import (with its run directories and config writer), small stats.

Benchmarks print ratios measured side by side in one run; they never assert timings.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "lab"))

import lab  # noqa: E402,F401  (tests/lab/lab.py, for the benchmarks: run dirs, config writer, guests)

PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable


class BenchError(RuntimeError):
    """The benchmark could not be carried out (a tool failed, the lab is missing)."""


def vmsnapd(config: Path, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "vmsnapd", "-c", str(config), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=str(REPO))


def check_ok(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        raise BenchError(f"{what} exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n"
                         f"--- stderr\n{proc.stderr[-3000:]}")


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def ratio(a, b) -> str:
    try:
        return f"{a / b:.2f}x"
    except ZeroDivisionError:
        return "n/a"


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def destroy_pool_patiently(pool, wait_s: float = 120) -> None:
    """lab.destroy_pool, tried again for up to `wait_s` while zfs-fuse says "busy": a dataset stays busy for a
    while after the QEMU that had a file open on it died, and a just-emptied pool while other sessions keep
    zfs-fuse busy. Anything else, or still busy at the end, is a warning: `make lab-clean` (or the next test
    session, its process being gone) removes what is left."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        try:
            lab.destroy_pool(pool)
            return
        except Exception as e:  # noqa: BLE001 — cleanup of a benchmark: report, never mask its result
            if "busy" not in str(e) or time.monotonic() > deadline:
                print(f"warning: could not destroy pool {pool}: {e}; `make lab-clean` removes it", file=sys.stderr)
                return
            time.sleep(5)


def destroy_leftover_vms() -> None:
    """Domains this process created and did not remove (a guest that failed to come up, a failed run)."""
    for name in list(lab.CREATED_VMS):
        try:
            lab.destroy_vm(name)  # a domain already gone is fine
        except Exception as e:  # noqa: BLE001 — cleanup: report and go on with the rest
            print(f"warning: could not remove domain {name}: {e}", file=sys.stderr)


def tear_down(pool, root: Path | None, watcher=None) -> None:
    """What a benchmark made, whatever happened: the guests this process created, its pause watcher, its pool,
    its run folder and the tmpfs folder of the same name (when it made one)."""
    destroy_leftover_vms()
    if watcher is not None:
        watcher.close()
    if pool is not None:
        destroy_pool_patiently(pool)
    if root is not None:
        remove_tree(root)
        remove_tree(Path("/dev/shm") / root.name)
