"""Trust drill of `vmsnapd restore` on the lab: a restore point is paired with a RAM dump only when the dump's
manifest vouches for it (docs/operations.md, "Restore")."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.lab]

HOURLY_AND_DAILY = {"hourly": 3, "daily": 3, "monthly": 0}
ASIDE_MARK = ".vmsnapd-replaced-"


def _snap_max(lab, vm, dataset, snap) -> int:
    return lab.snapshot_max_counter(f"{dataset.name}@{snap}", vm.disk.relpath)


def _asides(lab, dataset) -> list[str]:
    parent = str(dataset).rsplit("/", 1)[0]
    names = lab.zfs("list", "-H", "-o", "name", "-r", parent).split()
    return [n for n in names if n.startswith(f"{dataset}{ASIDE_MARK}") and "/" not in n[len(str(dataset)):]]


def _drop_aside(lab, env, vm) -> None:
    lab.stop_vm(vm)  # zfs-fuse refuses to destroy the aside while the restored disk (its clone) is open
    env.run("restore", "--drop-aside", vm.name, "--yes")


def test_a_name_taken_at_another_instant_is_never_paired_with_the_cycles_ram_dump(lab, shared_vm, vmsnapd_env,
                                                                                   tmp_path):
    """The cycle finds its hourly name taken (another tool, the same second) and keeps its RAM dump for the daily
    only; the hourly name is then taken by hand at a later instant. Restoring that hourly must boot from its own
    disks, not resume the cycle's RAM onto them, and restoring the daily must clone the daily (the cycle's own disks),
    not the later snapshot that merely shares its stamp — before, both took the dump by its time stamp alone."""
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {**HOURLY_AND_DAILY, "domain": vm.name}
    wrapper = tmp_path / "bin"
    wrapper.mkdir()
    (wrapper / "zfs").write_text(
        '#!/bin/sh\nif [ "$1" = snapshot ]; then case "$2" in *_hourly) '
        'echo "cannot create snapshot \'$2\': dataset already exists" >&2; exit 1;; esac; fi\n'
        'exec /usr/sbin/zfs "$@"\n')
    (wrapper / "zfs").chmod(0o755)
    proc = env.run("once", "--take", env={"PATH": f"{wrapper}:{os.environ['PATH']}"})
    assert "already exists" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    (daily,) = lab.snapshot_names(dataset.name)
    assert daily.endswith("_daily")
    hourly = daily.removesuffix("_daily") + "_hourly"
    at_daily = _snap_max(lab, vm, dataset, daily)
    lab.wait_counter_advances(vm, by=20, start=at_daily)
    lab.snapshot(dataset.name, hourly)  # the name, at another instant
    at_hourly = _snap_max(lab, vm, dataset, hourly)
    assert at_hourly > at_daily + 10
    ram = {p["snapshot"]: p["ram_dump"] for p in json.loads(env.run("list", vm.name, "--json").stdout)}
    assert ram[daily] and not ram[hourly]  # `list` pairs by the manifest

    plan = env.run("restore", vm.name, hourly, "--force-stop", expect=10)
    assert f"  - boot {vm.name}" in plan.stdout and "  - resume" not in plan.stdout, plan.stdout
    assert "does not name" in plan.stdout + plan.stderr, plan.stdout + plan.stderr

    lab.write_token(vm, "restored")
    proc = env.run("restore", vm.name, daily, "--force-stop", "--yes")
    assert "resumed" in proc.stdout and f"from {daily}" in proc.stdout, proc.stdout
    (aside,) = _asides(lab, dataset)
    assert hourly in lab.snapshot_names(aside)  # the later snapshot is kept with the replaced state
    lab.wait_counter_advances(vm, by=5, start=at_daily, timeout=30)
    rewritten, first_new = lab.resume_evidence(vm, at_daily, "restored")
    assert not rewritten and first_new == at_daily + 1, (rewritten[:5], first_new, at_daily)
    # (at_daily + 1 may carry t0: the iteration in flight at the capture read its token before it)
    leftover = sorted(seq for seq, tok in vm.records().values() if tok == "t0" and seq > at_daily + 1)
    assert not leftover, f"the disk is the later snapshot's: its records {leftover[:5]} are there"
    _drop_aside(lab, env, vm)


def test_a_vm_left_on_its_overlay_by_a_killed_cycle_is_not_restored_before_recover(lab, shared_vm, vmsnapd_env,
                                                                                 tmp_path):
    """vmsnapd killed while the VM runs on its overlay: its newest writes are in overlay_dir, not in its dataset. A
    restore then would set aside a disk without them (and `recover` would later commit the overlay into the restored
    disk or delete it), so it is refused with the way out — `vmsnapd recover` — not with a hint to exclude the disk;
    after recover the same restore is planned."""
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {"hourly": 3, "daily": 0, "monthly": 0, "domain": vm.name}
    env.run("snapshot", dataset.name)
    (snap,) = lab.snapshot_names(dataset.name)
    lab.next_second()
    env.snapshot_killed_on_overlay(vm, dataset.name, tmp_path)
    xml_before = vm.dom.XMLDesc(0)

    for args in ((vm.name, snap, "--force-stop", "--yes"), (vm.name, snap, "--clone", lab.unique_name("c"), "--yes")):
        refused = env.run("restore", *args, expect=1)
        assert "vmsnapd recover" in refused.stderr and "nothing was changed" in refused.stderr, refused.stderr
        assert "exclude_disks" not in refused.stderr, refused.stderr
    # Following the old refusal's hint (exclude the disk) does not open the way either: the restore went on then.
    env.datasets[dataset.name]["exclude_disks"] = ["vda"]
    refused = env.run("restore", vm.name, snap, "--force-stop", expect=1)
    assert "vmsnapd recover" in refused.stderr, refused.stderr
    del env.datasets[dataset.name]["exclude_disks"]
    assert vm.dom.isActive() and vm.dom.XMLDesc(0) == xml_before and not _asides(lab, dataset)

    env.run("recover")
    assert str(env.overlay_dir) not in vm.dom.XMLDesc(0)
    env.run("restore", vm.name, snap, "--force-stop", expect=10)  # planned now; not carried out


def test_a_restore_killed_while_decompressing_leaves_no_lasting_image(lab, shared_vm, vmsnapd_env, tmp_path):
    """vmsnapd killed (kill -9) right after decompressing a zstd dump into state_dir/restore: the image (the size of
    the guest's RAM) was left there for good — only a restore of that very dump replaced it — and it counted
    against the room the next restore of another dump needs. The next restore names it and deletes it first."""
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.daemon["ram_compression"] = "zstd"
    env.datasets[dataset.name] = {"hourly": 3, "daily": 0, "monthly": 0, "domain": vm.name}
    env.run("snapshot", dataset.name)
    lab.next_second()
    env.run("snapshot", dataset.name)
    s1, s2 = lab.snapshot_names(dataset.name)
    wrapper = tmp_path / "zstd"
    wrapper.write_text('#!/bin/sh\nif [ "$2" = -d ]; then /usr/bin/zstd "$@"; kill -9 $PPID; exit 1; fi\n'
                       'exec /usr/bin/zstd "$@"\n')
    wrapper.chmod(0o755)
    killed = env.run("restore", vm.name, s2, "--force-stop", "--yes", expect=None,
                     env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert killed.returncode == -9, (killed.returncode, killed.stdout, killed.stderr)
    (left,) = (env.state_dir / "restore").iterdir()  # the decompressed image of s2's dump
    assert left.stat().st_size > 32 * 2**20
    env.run("restore", "--undo", vm.name, "--yes")  # back as before; the VM boots

    plan = env.run("restore", vm.name, s1, "--force-stop", expect=10)
    assert str(left) in plan.stdout and "interrupted restore" in plan.stdout, plan.stdout
    assert left.exists()  # a plan changes nothing
    proc = env.run("restore", vm.name, s1, "--force-stop", "--yes")
    assert "resumed" in proc.stdout and str(left) in proc.stdout, proc.stdout
    assert list((env.state_dir / "restore").iterdir()) == []
    _drop_aside(lab, env, vm)


def test_a_clone_name_zfs_refuses_is_refused_before_the_first_clone(lab, vm_factory, vmsnapd_env):
    """`--clone NAME` of a two-disk VM: `<parent>/NAME` fits ZFS's 255 characters, `<parent>/NAME-<leaf>` does not.
    The first clone was made, the second name refused (a usage error, exit 2), and the first clone stayed."""
    vm = vm_factory(disks=2, start=False)
    first, second = (d.dataset for d in vm.disks)
    env = vmsnapd_env
    env.datasets[first.name] = {"hourly": 3, "daily": 0, "monthly": 0, "domain": vm.name}
    env.datasets[second.name] = {"hourly": 3, "daily": 0, "monthly": 0, "domain": "none"}
    env.run("snapshot", first.name)
    (snap,) = lab.snapshot_names(first.name)
    pool = first.name.split("/")[0]
    name = "w" * (255 - len(pool) - 1 - 2)
    before = _names(lab, pool)
    proc = env.run("restore", vm.name, snap, "--clone", name, "--yes", expect=None)
    assert _names(lab, pool) == before, f"a partial clone was left: {set(_names(lab, pool)) - set(before)}"
    assert proc.returncode == 1 and "nothing was changed" in proc.stderr and "ZFS" in proc.stderr, proc.stderr
    assert name not in lab.conn().listDefinedDomains()


def _names(lab, root: str) -> list[str]:
    return sorted(lab.zfs("list", "-H", "-o", "name", "-t", "all", "-r", root).split("\n"))


def test_ctrl_c_during_the_swap_puts_everything_back(lab, shared_vm, vmsnapd_env, tmp_path):
    """An admin presses Ctrl-C while the restore swaps the datasets (here: during its `zfs promote`): the swap done so
    far is undone and the VM boots again from its own disks, as when a step fails — before, vmsnapd stopped with
    "interrupted", the VM off and its dataset renamed aside, leaving the way back (`restore --undo`) to be found."""
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {"hourly": 3, "daily": 0, "monthly": 0, "domain": vm.name}
    env.run("snapshot", dataset.name)
    (snap,) = lab.snapshot_names(dataset.name)
    _, pre_seen = lab.wait_counter_advances(vm, by=20, start=_snap_max(lab, vm, dataset, snap))
    pre_guids = lab.zfs("get", "-H", "-p", "-r", "-o", "name,value", "guid", dataset.name)
    marker = tmp_path / "promoting"
    wrapper = tmp_path / "zfs"
    wrapper.write_text(f'#!/bin/sh\nif [ "$1" = promote ]; then touch {marker}; sleep 3; fi\n'
                       'exec /usr/sbin/zfs "$@"\n')
    wrapper.chmod(0o755)
    env.write()
    proc = subprocess.Popen([sys.executable, "-m", "vmsnapd", "-c", str(env.config_path), "restore", vm.name, snap,
                             "--force-stop", "--yes"], env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "interrupted" in err and "undone" in err and "booted again" in err, (out, err)
    assert lab.zfs("get", "-H", "-p", "-r", "-o", "name,value", "guid", dataset.name) == pre_guids
    assert not _asides(lab, dataset) and "kept aside" not in env.run("status").stdout
    assert vm.dom.isActive()
    lab.wait_counter_advances(vm, by=3, start=pre_seen, timeout=60)  # from its own disk, not the snapshot's
