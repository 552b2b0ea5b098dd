"""Pruning that owns the RAM dumps, and hooks (issue 5), against running counter guests."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab]


def _dumps(env, domain: str) -> list[Path]:
    folder = env.ram_dir / domain
    return sorted(p for p in folder.iterdir() if ".mem" in p.name) if folder.exists() else []


def _stamp(name: str) -> str:
    return name[len("autosnap_"):].rsplit("_", 1)[0]


def test_dump_lives_as_long_as_a_snapshot_of_its_cycle(lab, shared_vm, vmsnapd_env):
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {"hourly": 1, "daily": 1, "monthly": 0, "domain": vm.name}

    with lab.faketime("-2h"):  # the first cycle is older than one hour: sanoid's rule may prune its hourly
        env.run("once", "--take")
    first = sorted(lab.snapshot_names(dataset.name))
    created = int(lab.zfs("get", "-H", "-p", "-o", "value", "creation", f"{dataset.name}@{first[1]}"))
    assert time.time() - created > 3700, ("the shared faketime file was reset during this test's window "
                                          f"(faketime now {lab.get_faketime()}): rerun it alone")
    assert [n.rsplit("_", 1)[1] for n in first] == ["daily", "hourly"], first
    assert len({_stamp(n) for n in first}) == 1
    first_dump = _dumps(env, vm.name)
    assert len(first_dump) == 1 and _stamp(first[0]) in first_dump[0].name

    lab.next_second()
    env.run("snapshot", dataset.name, "--period", "hourly")
    dumps = _dumps(env, vm.name)
    assert len(dumps) == 2
    second_dump = [d for d in dumps if d != first_dump[0]][0]
    second_hourly = [n for n in sorted(lab.snapshot_names(dataset.name)) if n not in first][0]

    proc = env.run("once", "--prune")
    left = sorted(lab.snapshot_names(dataset.name))
    assert left == sorted([first[0], second_hourly]), left  # first hourly gone, its daily stays
    assert _dumps(env, vm.name) == dumps, "the first dump went although its daily snapshot is alive"
    assert "RAM dumps" not in proc.stdout

    env.datasets[dataset.name]["daily"] = 0
    dry = env.run("once", "--prune", "--dry-run")
    assert str(first_dump[0]) in dry.stdout and "would delete" in dry.stdout, dry.stdout
    assert _dumps(env, vm.name) == dumps
    env.run("once", "--prune")
    assert sorted(lab.snapshot_names(dataset.name)) == [second_hourly]
    assert _dumps(env, vm.name) == [second_dump]
    assert not Path(str(first_dump[0]).rsplit(".mem", 1)[0] + ".json").exists()


def test_ram_keep_keeps_dumps_of_the_newest_cycles_only(lab, shared_vm, vmsnapd_env):
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {"hourly": 3, "daily": 0, "monthly": 0, "domain": vm.name, "ram_keep": 1}
    for _ in range(3):
        env.run("snapshot", dataset.name)
        lab.next_second()
    assert len(_dumps(env, vm.name)) == 3
    env.run("once", "--prune")
    snaps = sorted(lab.snapshot_names(dataset.name))
    assert len(snaps) == 3
    dumps = _dumps(env, vm.name)
    assert len(dumps) == 1 and _stamp(snaps[-1]) in dumps[0].name


def test_orphan_dump_swept_and_foreign_files_untouched(lab, shared_vm, vmsnapd_env):
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {"hourly": 5, "daily": 0, "monthly": 0, "domain": vm.name}
    env.run("snapshot", dataset.name)
    (snap,) = sorted(lab.snapshot_names(dataset.name))
    foreign = env.ram_dir / vm.name / "notes.txt"
    foreign.write_text("admin's file")
    stray = env.ram_dir / "unrelated.mem"
    stray.write_text("not ours")
    lab.zfs("destroy", f"{dataset.name}@{snap}")  # by hand
    proc = env.run("once", "--prune")
    assert _dumps(env, vm.name) == []
    assert "orphan" in proc.stderr
    assert foreign.read_text() == "admin's file" and stray.exists()


HOOK = r'''#!/usr/bin/env python3
import json, os, sys
out = os.environ["HOOK_OUT"] if "HOOK_OUT" in os.environ else sys.argv[1]
with open(out, "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "env": {k: v for k, v in os.environ.items()
                        if k.startswith(("SANOID_", "VMSNAPD_"))}}) + "\n")
sys.exit(int(os.environ.get("HOOK_EXIT", "0")))
'''


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper (PID 1 here may never reap orphans)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _hook(tmp_path: Path, body: str = HOOK) -> Path:
    path = tmp_path / "hook.py"
    path.write_text(body)
    path.chmod(0o755)
    return path


def test_hooks_get_sanoid_environment_and_verbatim_argv(lab, shared_vm, vmsnapd_env, tmp_path):
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    out = tmp_path / "calls.jsonl"
    hook = _hook(tmp_path)
    tricky = "a b 'q' \"dq\" $(touch /tmp/pwned) `id` ;"
    env.datasets[dataset.name] = {
        "hourly": 1, "daily": 1, "monthly": 0, "domain": vm.name,
        "hooks": {"pre_snapshot": [str(hook), str(out), tricky], "post_snapshot": [str(hook), str(out)]},
    }
    env.run("once", "--take")
    calls = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(calls) == 2
    pre, post = calls
    assert pre["argv"] == [str(out), tricky]
    assert not Path("/tmp/pwned").exists()
    names = sorted(lab.snapshot_names(dataset.name))
    hourly = [n for n in names if n.endswith("_hourly")][0]
    daily = [n for n in names if n.endswith("_daily")][0]
    # sanoid's values (tests/sanoid_oracle/test_hook_env.py): comma-separated short names, longest period first,
    # types in the order of the names; the post script's SANOID_SNAPNAME carries the dataset
    assert pre["env"]["SANOID_SCRIPT"] == "pre" and post["env"]["SANOID_SCRIPT"] == "post"
    assert pre["env"]["SANOID_TARGET"] == dataset.name == pre["env"]["SANOID_TARGETS"]
    assert pre["env"]["SANOID_SNAPNAMES"] == f"{daily},{hourly}"
    assert pre["env"]["SANOID_SNAPNAME"] == daily and post["env"]["SANOID_SNAPNAME"] == f"{dataset.name}@{daily}"
    assert pre["env"]["SANOID_TYPES"] == "daily,hourly"
    assert post["env"]["SANOID_PRE_FAILURE"] == "0"
    assert pre["env"]["VMSNAPD_DOMAIN"] == vm.name and pre["env"]["VMSNAPD_PHASE"] == "pre_snapshot"
    assert pre["env"]["VMSNAPD_DRY_RUN"] == "0"
    dump = _dumps(env, vm.name)[0]
    assert post["env"]["VMSNAPD_RAM_DUMP"] == str(dump)


def test_failing_pre_snapshot_hook_means_no_snapshot_and_no_overlay(lab, shared_vm, vmsnapd_env, tmp_path):
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    out = tmp_path / "calls.jsonl"
    hook = _hook(tmp_path)
    env.datasets[dataset.name] = {
        "hourly": 1, "daily": 0, "monthly": 0, "domain": vm.name,
        "hooks": {"pre_snapshot": ["/bin/false"], "post_snapshot": [str(hook), str(out)]},
    }
    proc = env.run("once", "--take", expect=1)
    assert "pre_snapshot hook failed" in proc.stdout
    assert sorted(lab.snapshot_names(dataset.name)) == []
    assert list(env.overlay_dir.iterdir()) == [] and _dumps(env, vm.name) == []
    assert str(env.overlay_dir) not in vm.dom.XMLDesc(0)
    (post,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert post["env"]["SANOID_PRE_FAILURE"] == "1"  # post_snapshot runs whenever pre_snapshot ran

    env.datasets[dataset.name]["pre_snapshot_failure"] = "continue"
    env.run("once", "--take")
    assert len(sorted(lab.snapshot_names(dataset.name))) == 1


def test_hook_past_its_timeout_is_killed_with_children_and_pass_goes_on(lab, dataset_factory, vmsnapd_env, tmp_path):
    slow, other = dataset_factory(), dataset_factory()
    pidfile = tmp_path / "child.pid"
    script = tmp_path / "slow.sh"
    script.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\nwait\n")
    script.chmod(0o755)
    env = vmsnapd_env
    env.datasets[slow.name] = {"hourly": 1, "daily": 0, "monthly": 0, "domain": "none",
                               "hooks": {"pre_snapshot": [str(script)], "timeout": 2}}
    env.datasets[other.name] = {"hourly": 1, "daily": 0, "monthly": 0, "domain": "none"}
    proc = env.run("once", "--take", expect=1)  # returns at all: the hook's sleep 300 did not hold the pass
    assert "timeout" in proc.stdout + proc.stderr
    child = int(pidfile.read_text())
    assert not _alive(child), f"the hook's child {child} survived the timeout"
    assert sorted(lab.snapshot_names(slow.name)) == []
    assert len(sorted(lab.snapshot_names(other.name))) == 1


def test_pre_prune_hook_keeps_its_snapshot_and_post_prune_gets_the_list(lab, dataset, vmsnapd_env, tmp_path):
    env = vmsnapd_env
    out = tmp_path / "calls.jsonl"
    hook = _hook(tmp_path)
    keeper = tmp_path / "keep.sh"
    # hooks get a minimal environment (no KEEP from ours): the snapshot to keep comes as an argument
    keeper.write_text('#!/bin/sh\ncase "$SANOID_SNAPNAME" in *"$1"*) exit 1;; esac\nexit 0\n')
    keeper.chmod(0o755)
    with lab.faketime("-1h"):  # older than now, whatever second the prune runs in (hourly = 0: all of ours go)
        for i in range(3):
            lab.snapshot(dataset, f"autosnap_2026-01-0{i + 1}_00:00:00_hourly")
    env.datasets[dataset.name] = {"hourly": 0, "daily": 0, "monthly": 0, "domain": "none",
                                  "hooks": {"pre_prune": [str(keeper), "2026-01-02"],
                                            "post_prune": [str(hook), str(out)]}}
    env.run("once", "--prune")
    assert sorted(lab.snapshot_names(dataset.name)) == ["autosnap_2026-01-02_00:00:00_hourly"]
    (post,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert post["env"]["VMSNAPD_DESTROYED"].split("\n") == [
        f"{dataset.name}@autosnap_2026-01-01_00:00:00_hourly", f"{dataset.name}@autosnap_2026-01-03_00:00:00_hourly"]
    assert post["env"]["SANOID_SCRIPT"] == "prune"
