"""Fixtures for driving vmsnapd itself (through its CLI, as an admin would) against the lab."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import lab as labmod  # tests/lab/lab.py, put on sys.path by tests/conftest.py


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


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
        daemon = {"state_dir": str(self.state_dir), "overlay_dir": str(self.overlay_dir),
                  "ram_dir": str(self.ram_dir), **self.daemon}
        lines = ["[daemon]"] + [f"{k} = {_toml_value(v)}" for k, v in daemon.items()]
        for name, table in self.templates.items():
            lines += ["", f"[templates.{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        for name, table in self.datasets.items():
            hooks = table.get("hooks")
            lines += ["", f'[datasets."{name}"]'] + [
                f"{k} = {_toml_value(v)}" for k, v in table.items() if k != "hooks"]
            if hooks:
                lines += ["", f'[datasets."{name}".hooks]'] + [f"{k} = {_toml_value(v)}" for k, v in hooks.items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        self.config_path.chmod(0o600)
        return self.config_path

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
    # Not under pytest's 0700 tmp dir: QEMU runs as libvirt-qemu and must reach overlay_dir.
    root = labmod.LAB_DIR / "runs" / labmod.unique_name("run")
    root.mkdir(parents=True)
    root.chmod(0o755)
    (root / "overlay").mkdir(mode=0o711)
    env = VmsnapdEnv(root=root)
    yield env
    shutil.rmtree(root, ignore_errors=True)
