"""Trust drill of pruning on the lab: a snapshot a clone depends on (`restore --clone`, the state an in-place restore
keeps aside, an admin's `zfs clone`) is kept and reported like a held one, not a failure of every pass."""
from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.lab]

POLICY = {"hourly": 2, "daily": 0, "monthly": 0, "domain": "none", "autosnap": False}


def _aged_hourlies(lab, dataset: str, ages_h: range) -> list[str]:
    names = []
    with lab.faketime(f"-{ages_h[0]}h"):
        for age in ages_h:
            lab.set_faketime(f"-{age}h")
            name = "autosnap_" + time.strftime("%Y-%m-%d_%H:%M:%S", time.gmtime(time.time() - age * 3600)) + "_hourly"
            lab.zfs("snapshot", f"{dataset}@{name}")
            names.append(name)
    created = int(lab.zfs("get", "-H", "-p", "-o", "value", "creation", f"{dataset}@{names[-1]}"))
    assert time.time() - created > (ages_h[-1] - 0.5) * 3600, ("the shared faketime file was reset during this "
                                                               "test's window: rerun it alone")
    return names


def test_a_cloned_snapshot_is_kept_with_a_warning_and_the_pass_does_not_fail(lab, dataset_factory, vmsnapd_env):
    parent = dataset_factory(mountpoint="none")
    dataset = f"{parent.name}/web"
    lab.zfs("create", dataset)
    names = _aged_hourlies(lab, dataset, range(6, 2, -1))  # 6..3 h old: the two oldest are due to go
    clone = f"{parent.name}/web-test"  # as `vmsnapd restore web SNAP --clone web-test` names it
    lab.zfs("clone", f"{dataset}@{names[0]}", clone)
    env = vmsnapd_env
    env.datasets[dataset] = POLICY

    dry = env.run("once", "--prune", "--dry-run")
    assert "dry-run:" in dry.stderr and names[1] in dry.stdout, dry.stdout + dry.stderr
    proc = env.run("once", "--prune")  # exit 0: nothing failed
    assert f"kept {dataset}@{names[0]}" in proc.stdout and clone in proc.stdout, proc.stdout
    assert "FAILED" not in proc.stdout and "ERROR" not in proc.stderr, proc.stdout + proc.stderr
    assert lab.snapshot_names(dataset) == [names[0], *names[2:]]  # the origin stays, the other due one went
    assert "FAILED" not in env.run("status").stdout

    lab.destroy_dataset(clone)  # the clone is gone: the next pass lets its origin go
    env.run("once", "--prune")
    assert lab.snapshot_names(dataset) == names[2:]
