"""The first-pass prune guard, through vmsnapd's real adapters (Runner, Zfs) against the oracle's fake `zfs`
(tests/sanoid_oracle/fakezfs.py) — and the daemon's own pass, `once --dry-run` and `once --prune --confirm`."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmsnapd.config import load_config
from vmsnapd.daemon import Daemon
from vmsnapd.policy import prune_guard_holds

ROOT = Path(__file__).resolve().parents[2]
DATASET = "tank/vm"


@pytest.fixture
def world(tmp_path, fake_zfs):
    """A fake pool with 36 hourlies (1..36 h old) on tank/vm, the fake zfs first on PATH, a config writer."""
    state = fake_zfs
    now = int(time.time())
    snaps = [{"name": f"{DATASET}@autosnap_{time.strftime('%Y-%m-%d_%H:%M:%S', time.gmtime(now - h * 3600))}_hourly",
              "creation": now - h * 3600} for h in range(36, 0, -1)]
    snaps.append({"name": f"{DATASET}@manual-keep", "creation": now - 99 * 3600})
    state.write_text(json.dumps({"datasets": {"tank": {"creation": 0}, DATASET: {"creation": 0}},
                                 "snapshots": snaps}))

    class World:
        root = tmp_path
        state_dir = tmp_path / "state"
        config = tmp_path / "vmsnapd.toml"

        def write(self, hourly: int, guard: bool = True) -> Path:
            self.config.write_text(
                f'[daemon]\nstate_dir = "{self.state_dir}"\nram_dir = "{tmp_path / "ram"}"\n'
                f'overlay_dir = "{tmp_path / "ovl"}"\nprune_guard = {str(guard).lower()}\n'
                'libvirt_uri = "qemu:///system?socket=/nonexistent/libvirt-sock"\n'
                f'[datasets."{DATASET}"]\nhourly = {hourly}\ndaily = 0\nmonthly = 0\nautosnap = false\n'
                'domain = "none"\n')
            self.config.chmod(0o600)
            return self.config

        def snapshots(self) -> list[str]:
            return [s["name"].split("@")[1] for s in json.loads(state.read_text())["snapshots"]]

        def daemon_pass(self, hourly: int, guard: bool = True) -> None:
            path = self.write(hourly, guard)
            Daemon(path, load_config(path)).one_pass()

        def cli(self, *args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "vmsnapd", "-c", str(self.config), *args],
                                  capture_output=True, text=True, timeout=120, cwd=ROOT)

    return World()


def test_rule():
    assert prune_guard_holds(19, 36, "new", None)  # never confirmed, more than half
    assert not prune_guard_holds(18, 36, "new", None)  # exactly half is allowed
    assert not prune_guard_holds(33, 36, "same", "same")  # confirmed: prunes as the policy says
    assert prune_guard_holds(33, 36, "changed", "same")


def test_a_typo_is_held_back_until_confirmed(world, caplog):
    caplog.set_level(logging.INFO)
    world.daemon_pass(hourly=36)  # the policy in force: nothing to destroy, confirmed
    confirmed = json.loads((world.state_dir / "prune-guard.json").read_text())["confirmed"]
    assert list(confirmed) == [DATASET]
    assert len(world.snapshots()) == 37

    world.daemon_pass(hourly=3)  # `hourly = 3` for 36: 33 of 36 would go
    assert len(world.snapshots()) == 37
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "prune guard" in r.getMessage()]
    assert len(warnings) == 1 and "would destroy 33 of its 36" in warnings[0] and "_hourly" in warnings[0]
    world.daemon_pass(hourly=3)  # still held back, and said only once at WARNING
    assert len(world.snapshots()) == 37
    assert len([r for r in caplog.records if r.levelno == logging.WARNING and "prune guard" in r.getMessage()]) == 1

    check = world.cli("check")
    assert check.returncode == 1 and "held back by the prune guard" in check.stdout, check.stdout

    dry = world.cli("once", "--prune", "--dry-run")
    assert dry.returncode == 0 and "would destroy" in dry.stdout and dry.stdout.count("_hourly") == 33
    assert len(world.snapshots()) == 37

    done = world.cli("once", "--prune", "--confirm")
    assert done.returncode == 0, done.stderr
    assert len(world.snapshots()) == 4 and "manual-keep" in world.snapshots()
    guard_file = world.state_dir / "prune-guard.json"
    assert guard_file.stat().st_mode & 0o777 == 0o600

    world.daemon_pass(hourly=3)  # confirmed: the daemon prunes by it from now on (nothing left to go)
    assert len(world.snapshots()) == 4
    assert "held back" not in world.cli("check").stdout


def test_a_small_change_goes_ahead_and_a_new_dataset_is_guarded(world):
    world.daemon_pass(hourly=30)  # never confirmed, but only 6 of 36 go: not a typo-sized change
    assert len(world.snapshots()) == 31
    world.daemon_pass(hourly=2)  # 28 of 30 would go
    assert len(world.snapshots()) == 31


def test_prune_guard_false_turns_it_off(world):
    world.daemon_pass(hourly=3, guard=False)
    assert len(world.snapshots()) == 4


def test_an_unreadable_guard_file_confirms_nothing(world, caplog):
    world.state_dir.mkdir(mode=0o700)
    (world.state_dir / "prune-guard.json").write_text("{not json")
    world.daemon_pass(hourly=3)
    assert len(world.snapshots()) == 37
    assert any("cannot read" in r.getMessage() for r in caplog.records)
