"""Datasets pruned side by side (`[daemon] zfs_jobs`, issue 13) prune exactly what one after the other does, on the
lab's zfs-fuse, with snapshots really aged (the lab's faketime); a destroy that fails never stops the other datasets, nor the other snapshots of its own dataset."""
from __future__ import annotations

import os
import time

import pytest

pytestmark = [pytest.mark.lab]

CHILDREN = 6
AGES_H = range(10, 2, -1)  # 8 hourlies per child, 10..3 h old
POLICY = {"hourly": 2, "daily": 0, "monthly": 0, "domain": "none", "autosnap": False,
          "recursive": True, "process_children_only": True}


def _tree(lab, dataset_factory) -> tuple[str, list[str]]:
    parent = dataset_factory(mountpoint="none")
    for i in range(CHILDREN):
        lab.zfs("create", f"{parent.name}/c{i}")
    names = []
    with lab.faketime(f"-{AGES_H[0]}h"):
        for age in AGES_H:
            lab.set_faketime(f"-{age}h")
            name = "autosnap_" + time.strftime("%Y-%m-%d_%H:%M:%S", time.gmtime(time.time() - age * 3600)) + "_hourly"
            lab.zfs("snapshot", "-r", f"{parent.name}@{name}")
            names.append(name)
    created = int(lab.zfs("get", "-H", "-p", "-o", "value", "creation", f"{parent.name}/c0@{names[-1]}"))
    assert time.time() - created > 2.5 * 3600, ("the shared faketime file was reset during this test's window "
                                                f"(faketime now {lab.get_faketime()}): rerun it alone")
    return parent.name, names


def _left(lab, parent: str) -> dict[str, list[str]]:
    return {f"c{i}": sorted(lab.snapshot_names(f"{parent}/c{i}")) for i in range(CHILDREN)}


def test_side_by_side_prunes_what_one_by_one_does(lab, dataset_factory, vmsnapd_env):
    left = {}
    for jobs in (1, 8):
        parent, names = _tree(lab, dataset_factory)
        env = vmsnapd_env
        env.daemon["zfs_jobs"] = jobs
        env.datasets.clear()
        env.datasets[parent] = POLICY
        env.run("once", "--prune")
        kept = _left(lab, parent)
        assert kept == {f"c{i}": sorted(names[-2:]) for i in range(CHILDREN)}, kept
        left[jobs] = {child: [names.index(n) for n in snaps] for child, snaps in kept.items()}  # ages, not stamps
    assert left[1] == left[8]


def test_a_failing_destroy_never_stops_the_others(lab, dataset_factory, vmsnapd_env, tmp_path):
    parent, names = _tree(lab, dataset_factory)
    # One destroy fails (a zfs first on PATH refuses it). A dependent clone is no failure: kept and reported
    # (tests/integration/test_prune_drill.py).
    wrapper = tmp_path / "zfs"
    wrapper.write_text(f'#!/bin/sh\nif [ "$1" = destroy ] && [ "$2" = "{parent}/c2@{names[1]}" ]; then '
                       'echo "cannot destroy: I/O error" >&2; exit 1; fi\nexec /usr/sbin/zfs "$@"\n')
    wrapper.chmod(0o755)
    env = vmsnapd_env
    env.daemon["zfs_jobs"] = 8
    env.datasets[parent] = {**POLICY, "process_children_only": True}
    proc = env.run("once", "--prune", expect=None, env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert proc.returncode != 0 and "c2" in proc.stdout + proc.stderr
    left = _left(lab, parent)
    assert left["c2"] == sorted([names[1], *names[-2:]]), left["c2"]  # only the one that failed stays
    assert all(left[f"c{i}"] == sorted(names[-2:]) for i in range(CHILDREN) if i != 2), left
