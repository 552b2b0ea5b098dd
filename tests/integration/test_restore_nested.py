"""An in-place restore of a VM whose disks are on a dataset AND a managed child of it (found by the ZFS model of
tests/unit/test_restore_fakes.py): `--undo` is planned for the child before the parent, and a swap that fails in
the parent puts the child back with it."""
from __future__ import annotations

import os
import shutil

import pytest

pytestmark = [pytest.mark.lab]

ONE_HOURLY = {"hourly": 3, "daily": 0, "monthly": 0}
ASIDE_MARK = ".vmsnapd-replaced-"


def _tree(lab, dataset) -> dict[str, tuple[str, str]]:
    """name -> (guid, origin) of `dataset`, its children and all their snapshots: a rename, a re-creation or a
    clone left behind shows (zfs-fuse has no `zfs list -p`: read through `zfs get`)."""
    out = lab.zfs("get", "-H", "-p", "-r", "-o", "name,property,value", "guid,origin", str(dataset))
    values: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        name, prop, value = line.split("\t")
        values.setdefault(name, {})[prop] = value
    return {name: (v.get("guid", ""), v.get("origin", "-")) for name, v in values.items()}


def _nested_vm(lab, dataset, env):
    child = lab.create_dataset(dataset)
    vm = lab.create_vm([dataset, child])  # vda on the parent, vdb on its child
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name}
    env.datasets[child.name] = {**ONE_HOURLY, "domain": vm.name}
    env.run("snapshot", vm.name)
    (snap,) = lab.snapshot_names(dataset.name)
    assert lab.snapshot_names(child.name) == [snap]
    lab.wait_counter_advances(vm, by=10)
    lab.stop_vm(vm)
    return vm, child, snap


def test_undo_of_a_restore_with_a_managed_child_dataset(lab, dataset, vmsnapd_env):
    env = vmsnapd_env
    vm, child, snap = _nested_vm(lab, dataset, env)
    before = _tree(lab, dataset)

    env.run("restore", vm.name, snap, "--no-memory", "--yes")
    assert any(ASIDE_MARK in n for n in _tree(lab, dataset))
    lab.stop_vm(vm)

    plan = env.run("restore", "--undo", vm.name, expect=None)
    assert plan.returncode in (2, 10), plan.stdout + plan.stderr  # a plan, not a refusal
    proc = env.run("restore", "--undo", vm.name, "--yes")

    assert f"put back {child.name}" in proc.stdout and f"put back {dataset.name}" in proc.stdout, proc.stdout
    assert _tree(lab, dataset) == before


def test_a_failing_parent_swap_puts_the_child_back_too(lab, dataset, vmsnapd_env):
    """`zfs clone` fails for the parent after it was renamed aside (its child with it): the rollback renames it
    back and says so; nothing is left aside."""
    env = vmsnapd_env
    vm, child, snap = _nested_vm(lab, dataset, env)
    before = _tree(lab, dataset)
    bindir = lab.make_run_dir("zfsfail")
    wrapper = bindir / "zfs"
    wrapper.write_text('#!/bin/sh\nif [ "$1" = clone ]; then echo "injected failure" >&2; exit 1; fi\n'
                       f'exec {shutil.which("zfs")} "$@"\n')
    wrapper.chmod(0o755)
    try:
        proc = env.run("restore", vm.name, snap, "--no-memory", "--yes", expect=1,
                       env={"PATH": f"{bindir}:{os.environ['PATH']}"})
    finally:
        shutil.rmtree(bindir, ignore_errors=True)

    assert "injected failure" in proc.stderr and "undone" in proc.stderr, proc.stderr
    assert "failed too" not in proc.stderr, proc.stderr
    assert _tree(lab, dataset) == before
    assert "kept aside" not in env.run("status").stdout
