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


def destroy_pool_patiently(pool) -> None:
    """lab.destroy_pool, and once more after a pause: zfs-fuse keeps a dataset "busy" for a while after the
    QEMU that had a file open on it died. What is still left is removed by `make lab-clean` or by the next
    test session (its process is gone)."""
    import time

    for attempt in (1, 2):
        try:
            lab.destroy_pool(pool)
            return
        except Exception as e:  # noqa: BLE001
            if attempt == 2:
                print(f"warning: could not destroy pool {pool}: {e}; `make lab-clean` removes it", file=sys.stderr)
                return
            time.sleep(10)
