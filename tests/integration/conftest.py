"""Fixtures for driving vmsnapd itself (through its CLI, as an admin would) against the lab."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import lab as labmod  # tests/lab/lab.py, put on sys.path by tests/conftest.py


@dataclass
class VmsnapdEnv:
    """A config file plus private state/overlay/RAM directories; `run` calls the CLI with that config."""

    root: Path
    daemon: dict = field(default_factory=dict)
    datasets: dict[str, dict] = field(default_factory=dict)
    templates: dict[str, dict] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.root / "vmsnapd.toml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def overlay_dir(self) -> Path:
        return self.root / "overlay"

    @property
    def ram_dir(self) -> Path:
        return self.root / "ram"

    def write(self) -> Path:
        return labmod.write_vmsnapd_config(self.root, self.datasets, self.templates, self.daemon)

    def run(self, *args: str, expect: int | None = 0, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        self.write()
        proc = subprocess.run([sys.executable, "-m", "vmsnapd", "-c", str(self.config_path), "-v", *args],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        if expect is not None and proc.returncode != expect:
            raise AssertionError(f"vmsnapd {' '.join(args)} exited {proc.returncode}, expected {expect}\n"
                                 f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        return proc


@pytest.fixture
def vmsnapd_env(lab) -> VmsnapdEnv:
    env = VmsnapdEnv(root=labmod.make_run_dir("run"))
    yield env
    shutil.rmtree(env.root, ignore_errors=True)
