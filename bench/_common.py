"""Shared bits of the benchmarks: lab import, run directories, a vmsnapd config writer, small stats.

Benchmarks print ratios measured side by side in one run; they never assert timings.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "lab"))

import lab  # noqa: E402  (tests/lab/lab.py)

PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable


class BenchError(RuntimeError):
    """The benchmark could not be carried out (a tool failed, the lab is missing)."""


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def make_run_dir(kind: str) -> Path:
    """A fresh directory under /var/lib/vmsnapd-lab/runs (0755: QEMU runs as libvirt-qemu), with overlay/ (0711)."""
    root = lab.LAB_DIR / "runs" / lab.unique_name(kind)
    root.mkdir(parents=True)
    root.chmod(0o755)
    (root / "overlay").mkdir(mode=0o711)
    (root / "overlay").chmod(0o711)
    return root


def write_vmsnapd_config(root: Path, datasets: dict[str, dict], templates: dict[str, dict] | None = None,
                         daemon: dict | None = None) -> Path:
    d = {"state_dir": str(root / "state"), "overlay_dir": str(root / "overlay"), "ram_dir": str(root / "ram"),
         **(daemon or {})}
    lines = ["[daemon]"] + [f"{k} = {toml_value(v)}" for k, v in d.items()]
    for name, table in (templates or {}).items():
        lines += ["", f"[templates.{name}]"] + [f"{k} = {toml_value(v)}" for k, v in table.items()]
    for name, table in datasets.items():
        lines += ["", f'[datasets."{name}"]'] + [f"{k} = {toml_value(v)}" for k, v in table.items()]
    path = root / "vmsnapd.toml"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


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
