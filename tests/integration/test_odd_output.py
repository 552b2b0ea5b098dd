"""Odd zfs/zpool output on the lab (issue 8, "What was seen" #5): `-` for a dataset's `creation` or a pool's
capacity fails that dataset or pool with a message; the other datasets get their snapshots, nothing raises.

A wrapper first on PATH runs the real command and rewrites its output, as a different ZFS version might print it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab]

PLAIN = {"domain": "none", "frequently": 0, "hourly": 1, "daily": 0, "weekly": 0, "monthly": 0, "yearly": 0}


def wrapper(tmp_path: Path, name: str, body: str) -> dict:
    """`name` first on PATH, a bash script (`$REAL` is the real binary); returns the env for VmsnapdEnv.run."""
    real = shutil.which(name) or f"/usr/sbin/{name}"
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    script = folder / name
    script.write_text(f"#!/bin/bash\nset -o pipefail\nREAL={real}\n{body}\nexec $REAL \"$@\"\n")
    script.chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


def snapshots_of(lab, dataset) -> list[str]:
    out = lab.zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", str(dataset))
    return [line for line in out.splitlines() if line.split("@", 1)[0] == str(dataset)]


def test_dash_for_creation_fails_that_dataset_only(lab, dataset_factory, vmsnapd_env, tmp_path):
    parent = dataset_factory(mountpoint="none")
    a, odd, c = (dataset_factory(parent.name) for _ in range(3))
    env = vmsnapd_env
    env.datasets[parent.name] = {**PLAIN, "recursive": True, "process_children_only": True}
    path_env = wrapper(tmp_path, "zfs", f'if [ "$1" = get ]; then\n'
                                        f'  $REAL "$@" | sed "s|^\\({odd.name}\\)\\tcreation\\t.*|\\1\\tcreation\\t-|"\n'
                                        f'  exit $?\nfi')
    proc = env.run("once", expect=1, env=path_env)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert f"dataset {odd.name} skipped: cannot read what zfs says about it" in proc.stdout, proc.stdout
    assert "'-'" in proc.stdout
    assert snapshots_of(lab, odd) == []
    for ds in (a, c):
        assert len(snapshots_of(lab, ds)) == 1, proc.stdout
    status = env.run("status", env=path_env)
    assert f"problem: dataset {odd.name} unreadable in zfs output" in status.stdout, status.stdout
    check = env.run("check", expect=None, env=path_env)
    assert check.returncode == 3 and "Traceback" not in check.stderr, check.stdout + check.stderr


def test_dash_for_pool_capacity_is_a_problem_not_a_crash(lab, dataset_factory, vmsnapd_env, tmp_path):
    ds = dataset_factory(mountpoint="none")
    env = vmsnapd_env
    env.datasets[ds.name] = {**PLAIN}
    env.run("once")
    path_env = wrapper(tmp_path, "zpool", 'if [ "$1" = list ]; then printf "%s\\t-\\n" "${@: -1}"; exit 0; fi')
    status = env.run("status", env=path_env)
    assert f"problem: pool {ds.pool}: " in status.stdout and "capacity" in status.stdout, status.stdout
    check = env.run("check", expect=None, env=path_env)
    assert check.returncode in (1, 2, 3) and "Traceback" not in check.stderr, check.stdout + check.stderr
    assert "capacity" in check.stdout
