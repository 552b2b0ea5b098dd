"""sanoid as the oracle for vmsnapd's retention: both tools run over simulated time against a fake `zfs`.

Two worlds (two state files of `fakezfs.py`) start with the same datasets. At every step both tools run
under one frozen libfaketime clock (`FAKETIME_FMT=%s FAKETIME=<epoch>`: every process, the fake zfs
included, sees exactly that second, so `creation`, sanoid's `time()` and vmsnapd's `now` agree to the
second and the comparisons at exactly N periods are deterministic; an epoch also has no ambiguous local
hour at the end of DST):

- sanoid world: sanoid's cache is deleted, `sanoid --cron`, then — at the same instant, cache deleted
  again — `sanoid --prune-snapshots`. The second run is the documented take-before-prune ordering:
  sanoid prunes on the listing it read *before* taking, so right after its pass it holds one snapshot
  per period more than its own rule allows, which its next pass removes first. vmsnapd lists again after
  taking. Running sanoid's own prune once more at the same instant is what sanoid's next pass does first.
- vmsnapd world: `vmsnapd once` (through `run_vmsnapd.py`, which can inject a wrong rule to prove the
  oracle can fail).

After each step the kept sets must be identical: per dataset, the (period, creation) of every
`autosnap_…` snapshot, period read with sanoid's own pattern (so sanoid's `…dst_hourly` names of the
repeated DST hour compare with vmsnapd's, which move a second instead).

Manual cycles (`vmsnapd snapshot`) are mirrored into the sanoid world as the same `zfs snapshot` an
admin would type, at the same instant. An outage is simply steps that are not run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
SANOID = shutil.which("sanoid", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/sanoid"
# sanoid's own reading of a snapshot name (getsnaps): ^autosnap, type = last `_\w*ly`
SANOID_TYPE = re.compile(r"^autosnap.*_(\w*ly)$")


def missing_tools() -> str | None:
    """Why the oracle cannot run here, or None."""
    if not os.path.exists(FAKETIME_LIB):
        return f"libfaketime missing ({FAKETIME_LIB}; Debian package faketime)"
    if not os.path.exists(SANOID):
        return "sanoid missing (Debian package sanoid)"
    return None


class Mismatch(AssertionError):
    pass


def kept(state_file: Path) -> dict[str, set[tuple[str, int]]]:
    """Per dataset: {(period, creation)} of the autosnap snapshots in a fake-zfs state file."""
    state = json.loads(state_file.read_text() or "{}")
    out: dict[str, set[tuple[str, int]]] = {d: set() for d in state.get("datasets", {})}
    for snap in state.get("snapshots", []):
        dataset, name = snap["name"].split("@", 1)
        match = SANOID_TYPE.match(name)
        if match:
            out[dataset].add((match.group(1), snap["creation"]))
    return out


def snapshot_names(state_file: Path) -> list[str]:
    state = json.loads(state_file.read_text() or "{}")
    return [s["name"] for s in state.get("snapshots", [])]


@dataclass
class Oracle:
    root: Path
    datasets: list[str]  # created in this order in both worlds (mountpoint=none)
    sanoid_conf: str
    vmsnapd_toml: str  # [daemon] state_dir etc. are added here
    tz: str = "UTC"
    wrong_rule: str | None = None  # "newest-n": vmsnapd is run with a deliberately wrong retention rule
    steps: int = 0
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bin = self.root / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        zfs = self.bin / "zfs"
        zfs.write_text(f"#!/bin/sh\nexec {sys.executable} -I {HERE / 'fakezfs.py'} \"$@\"\n")
        zfs.chmod(0o755)
        self.sanoid_state = self.root / "sanoid-world.json"
        self.vmsnapd_state = self.root / "vmsnapd-world.json"
        (self.root / "sanoid-etc").mkdir(exist_ok=True)
        (self.root / "sanoid-etc" / "sanoid.conf").write_text(self.sanoid_conf)
        state_dir = self.root / "vmsnapd-state"
        config = self.root / "vmsnapd.toml"
        config.write_text(
            "[daemon]\n"
            # No libvirt here (datasets are domain = "none"); an unreachable socket fails fast, so recover's
            # look for VMs left on an overlay costs nothing instead of waiting for a busy libvirtd.
            'libvirt_uri = "qemu:///system?socket=/nonexistent/libvirt-sock"\n'
            f'state_dir = "{state_dir}"\noverlay_dir = "{self.root / "overlay"}"\nram_dir = "{self.root / "ram"}"\n'
            + self.vmsnapd_toml)
        config.chmod(0o600)
        self.config = config
        for world in (self.sanoid_state, self.vmsnapd_state):
            world.write_text("")
            for dataset in self.datasets:
                self._zfs(world, datetime(2020, 1, 1, tzinfo=UTC), "create", dataset)

    # -- running things under the faked clock ---------------------------------------------------------

    def _env(self, world: Path, at: datetime) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKETIME", "LD_PRELOAD"))}
        env.update({
            "PATH": f"{self.bin}:/usr/sbin:/usr/bin:/sbin:/bin",
            "TZ": self.tz,
            "LD_PRELOAD": FAKETIME_LIB,
            "FAKETIME_FMT": "%s",
            "FAKETIME": str(int(at.timestamp())),
            "FAKE_ZFS_STATE": str(world),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent.parent), env.get("PYTHONPATH", "")])),
        })
        if self.wrong_rule:
            env["ORACLE_WRONG_RULE"] = self.wrong_rule
        return env

    def _run(self, argv: list[str], world: Path, at: datetime, expect_ok: bool = True) -> str:
        proc = subprocess.run(argv, env=self._env(world, at), capture_output=True, text=True, timeout=120)
        if expect_ok and proc.returncode != 0:
            raise RuntimeError(f"{argv} at {at:%Y-%m-%d %H:%M:%S}Z exited {proc.returncode}:\n"
                               f"{proc.stdout}\n{proc.stderr}")
        return proc.stdout + proc.stderr

    def _zfs(self, world: Path, at: datetime, *args: str) -> str:
        return self._run([str(self.bin / "zfs"), *args], world, at)

    def _sanoid(self, at: datetime, *mode: str) -> str:
        cache = self.root / "sanoid-cache"
        shutil.rmtree(cache, ignore_errors=True)  # its TTL compares a real mtime with the faked clock
        return self._run([SANOID, *mode, "--verbose", f"--configdir={self.root / 'sanoid-etc'}",
                          f"--cache-dir={cache}", f"--run-dir={self.root / 'sanoid-run'}"], self.sanoid_state, at)

    def _vmsnapd(self, at: datetime, *args: str) -> str:
        return self._run([sys.executable, str(HERE / "run_vmsnapd.py"), "-c", str(self.config), "-v", *args],
                         self.vmsnapd_state, at)

    # -- the scenario verbs -------------------------------------------------------------------------------

    def step(self, at: datetime) -> None:
        """One pass of each tool at `at` (aware), then compare."""
        if "taking snapshot" in self._sanoid(at, "--cron"):
            # take-before-prune ordering, see the module doc (nothing taken: its listing was current)
            self._sanoid(at, "--prune-snapshots")
        self._vmsnapd(at, "once")
        self.steps += 1
        self.compare(at)

    def manual(self, at: datetime, target: str, period: str = "hourly") -> None:
        """`vmsnapd snapshot TARGET --period P`, and the same `zfs snapshot` by hand in sanoid's world."""
        before = set(snapshot_names(self.vmsnapd_state))
        self._vmsnapd(at, "snapshot", target, "--period", period)
        for full in snapshot_names(self.vmsnapd_state):
            if full not in before:
                self._zfs(self.sanoid_state, at, "snapshot", full)
        self.compare(at)

    def hold(self, at: datetime, dataset: str, index: int = 0) -> str:
        """`zfs hold` the index-th oldest autosnap snapshot of `dataset`, the same one in both worlds."""
        state = json.loads(self.vmsnapd_state.read_text())
        mine = [s for s in state["snapshots"] if s["name"].startswith(f"{dataset}@autosnap")]
        full = sorted(mine, key=lambda s: s["creation"])[index]["name"]
        creation = sorted(mine, key=lambda s: s["creation"])[index]["creation"]
        twin = [s["name"] for s in json.loads(self.sanoid_state.read_text())["snapshots"]
                if s["name"].split("@")[0] == dataset and s["creation"] == creation
                and SANOID_TYPE.match(s["name"].split("@")[1]).group(1) == SANOID_TYPE.match(full.split("@")[1]).group(1)]
        self._zfs(self.vmsnapd_state, at, "hold", "keep", full)
        self._zfs(self.sanoid_state, at, "hold", "keep", twin[0])
        return full

    def run(self, start: datetime, end: datetime, every: timedelta, *, outages=(), manual=()) -> None:
        """Steps from start to end (inclusive); no step inside an outage (start, end); manual cycles
        (at, target, period) run before the step at or after their instant."""
        pending = sorted(manual)
        at = start
        while at <= end:
            while pending and pending[0][0] <= at:
                when, target, period = pending.pop(0)
                self.manual(when, target, period)
            if not any(a <= at < b for a, b in outages):
                self.step(at)
            at += every

    def compare(self, at: datetime) -> None:
        left, right = kept(self.sanoid_state), kept(self.vmsnapd_state)
        if left == right:
            return
        lines = [f"kept sets differ after the step at {at:%Y-%m-%d %H:%M:%S}Z (TZ={self.tz}, step {self.steps}):"]
        for dataset in sorted(set(left) | set(right)):
            only_s = left.get(dataset, set()) - right.get(dataset, set())
            only_v = right.get(dataset, set()) - left.get(dataset, set())
            for label, items in (("only sanoid kept", only_s), ("only vmsnapd kept", only_v)):
                for period, creation in sorted(items, key=lambda x: x[1]):
                    when = datetime.fromtimestamp(creation, UTC)
                    lines.append(f"  {dataset}: {label} {period} created {when:%Y-%m-%d %H:%M:%S}Z")
        raise Mismatch("\n".join(lines))
