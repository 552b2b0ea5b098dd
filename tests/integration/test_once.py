"""`vmsnapd once`, `snapshot`, `config check`, `import-sanoid` on real zfs-fuse datasets (issue 3, "Must hold").

Snapshots that must look old are made with the lab's time travel (the zfs-fuse daemon's clock), so retention and
catch-up are judged on real `creation` values, and their names carry the stamp of that age, as sanoid's would.
Every check compares exact snapshot sets.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from vmsnapd.lock import pass_lock

pytestmark = [pytest.mark.lab]

ROOT = Path(__file__).resolve().parents[2]
NAME_RE = re.compile(r"autosnap_(\d{4}-\d{2}-\d{2}_\d{2}:\d{2}:\d{2})_(\w+)")
PLAIN = {"domain": "none", "frequently": 0, "weekly": 0, "yearly": 0}
THREE = {**PLAIN, "hourly": 2, "daily": 2, "monthly": 1}
ZFS = shutil.which("zfs") or "/usr/sbin/zfs"


def all_snaps(lab, root) -> set[str]:
    """Every snapshot under `root`, full names."""
    out = lab.zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", str(root))
    return {line for line in out.split("\n") if "@" in line}


def snaps(lab, dataset) -> set[str]:
    """Short names of the snapshots of `dataset` itself."""
    return {s.split("@", 1)[1] for s in all_snaps(lab, dataset) if s.split("@", 1)[0] == str(dataset)}


def sanoid_name(age: timedelta, period: str) -> str:
    return f"autosnap_{(datetime.now(timezone.utc) - age).strftime('%Y-%m-%d_%H:%M:%S')}_{period}"


_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def make_old(lab, dataset, items: list[tuple[str, str]]) -> None:
    """items: (faketime offset like "-3d", snapshot name); each made with that creation time, verified.

    The zfs-fuse clock is shared by every lab user: each snapshot is made in a locked `lab.faketime` window, and
    its creation is still checked (a lab user shifting the clock without the lock) and made again when it is off."""
    for offset, name in items:
        want = int(offset[:-1]) * _UNIT_S[offset[-1]]
        for _attempt in range(5):
            with lab.faketime(offset):
                lab.snapshot(dataset, name)
            created = int(lab.zfs("get", "-H", "-p", "-o", "value", "creation", f"{dataset}@{name}").strip())
            if abs(created - time.time() - want) < 120:
                break
            lab.zfs("destroy", f"{dataset}@{name}")
        else:
            pytest.fail(f"could not make {dataset}@{name} {offset} old: the zfs-fuse clock keeps being "
                        "shifted by another lab user")


def assert_made_now(lab, dataset, names) -> None:
    """The snapshots a pass just took carry today's creation: the zfs-fuse clock is one for every lab user,
    and a concurrent `set_faketime` elsewhere would make them old and break the retention checks confusingly."""
    for name in names:
        created = int(lab.zfs("get", "-H", "-p", "-o", "value", "creation", f"{dataset}@{name}").strip())
        assert abs(created - time.time()) < 300, (
            f"{dataset}@{name} was created at {created}, not now: someone shifted the zfs-fuse clock "
            f"(faketime: {lab.get_faketime()}) during this test")


def away_from_boundaries() -> None:
    """Passes compared with each other must not straddle a schedule instant (:00 hourly, 23:59 daily)."""
    while True:
        now = datetime.now(timezone.utc)
        if now.minute in (58, 59) and now.second >= 45:
            time.sleep(61 - now.second)
            continue
        return


def new_names(before: set[str], after: set[str]) -> set[str]:
    return {s.split("@", 1)[1] for s in after - before}


def stamps(names) -> set[str]:
    return {NAME_RE.fullmatch(n.split("@", 1)[-1]).group(1) for n in names}


def zfs_wrapper(tmp_path: Path, script: str) -> dict:
    """A `zfs` first on PATH running `script` (sh) before the real zfs; returns the env for run()."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    wrapper = folder / "zfs"
    wrapper.write_text(f"#!/bin/sh\n{script}\nexec {ZFS} \"$@\"\n")
    wrapper.chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


@pytest.fixture
def unmounted(dataset_factory):
    """A fresh dataset with mountpoint=none: these tests need no files, and zfs-fuse destroys unmounted
    datasets without the "dataset is busy" lag of fuse unmounts."""
    return dataset_factory(mountpoint="none")


# ------------------------------------------------------------------------------------------------ first passes

def test_fresh_tree_gets_one_cycle_on_the_right_datasets_and_a_second_pass_does_nothing(
        lab, dataset_factory, vmsnapd_env):
    parent = dataset_factory(mountpoint="none")
    a = dataset_factory(parent.name)
    b = dataset_factory(parent.name)
    ax = dataset_factory(a.name)
    env = vmsnapd_env
    env.datasets[parent.name] = {**THREE, "recursive": True, "process_children_only": True}

    away_from_boundaries()
    env.run("once")
    after_first = all_snaps(lab, parent)
    by_dataset: dict[str, set[str]] = {}
    for full in after_first:
        ds, name = full.split("@", 1)
        by_dataset.setdefault(ds, set()).add(name)
    assert set(by_dataset) == {a.name, b.name, ax.name}, by_dataset  # not the parent
    (stamp,) = stamps(after_first)  # one timestamp for the whole pass
    expected = {f"autosnap_{stamp}_{p}" for p in ("hourly", "daily", "monthly")}
    assert all(names == expected for names in by_dataset.values()), by_dataset

    proc = env.run("once")
    assert all_snaps(lab, parent) == after_first, proc.stdout + proc.stderr

    # a dataset created after the first pass is picked up by the next, and only it gets snapshots
    c = dataset_factory(parent.name)
    lab.next_second()
    env.run("once")
    after_third = all_snaps(lab, parent)
    assert after_third - after_first == {f"{c}@{n.replace(stamp, s)}" for n in expected
                                         for s in stamps(after_third - after_first)}
    assert len(stamps(after_third - after_first)) == 1 and len(after_third - after_first) == 3
    assert after_first <= after_third


def test_not_recursive_covers_only_its_own_dataset(lab, dataset_factory, vmsnapd_env):
    top = dataset_factory(mountpoint="none")
    child = dataset_factory(top.name)
    env = vmsnapd_env
    env.datasets[top.name] = {**PLAIN, "hourly": 1, "daily": 0, "monthly": 0}
    env.run("once")
    assert snaps(lab, child) == set()
    (only,) = snaps(lab, top)
    assert NAME_RE.fullmatch(only).group(2) == "hourly"


def test_child_table_overrides_parent(lab, dataset_factory, vmsnapd_env):
    parent = dataset_factory(mountpoint="none")
    a = dataset_factory(parent.name)
    b = dataset_factory(parent.name)
    env = vmsnapd_env
    env.datasets[parent.name] = {**THREE, "recursive": True, "process_children_only": True}
    env.datasets[b.name] = {"daily": 0, "monthly": 0}
    env.run("once")
    assert {NAME_RE.fullmatch(n).group(2) for n in snaps(lab, a)} == {"hourly", "daily", "monthly"}
    assert {NAME_RE.fullmatch(n).group(2) for n in snaps(lab, b)} == {"hourly"}
    assert snaps(lab, parent) == set()


# ------------------------------------------------------------------------------------ retention with real age

def test_retention_by_creation_and_catch_up_once(lab, unmounted, vmsnapd_env):
    h = timedelta(hours=1)
    d = timedelta(days=1)
    old = {  # key: (faketime offset, name)
        "m70": ("-70d", sanoid_name(70 * d, "monthly")),
        "m40": ("-40d", sanoid_name(40 * d, "monthly")),
        "w10": ("-10d", sanoid_name(10 * d, "weekly")),  # weekly = 0: ours, so it goes
        # named like the newest hourly, but really the oldest: retention goes by creation, not by name
        "hx": ("-6h", sanoid_name(1 * h, "hourly")),
        "h5": ("-5h", sanoid_name(5 * h, "hourly")),
        "h4": ("-4h", sanoid_name(4 * h, "hourly")),
        "d3": ("-3d", sanoid_name(3 * d, "daily")),
        "h3": ("-3h", sanoid_name(3 * h, "hourly")),
        # an hour past two days: sanoid's rule destroys it only when older than N = 2 days; exactly -2d would race
        # the clock (created in the same second as the pass, it is not older)
        "d2": ("-49h", sanoid_name(49 * h, "daily")),
        "h2": ("-2h", sanoid_name(2 * h, "hourly")),
        "d1": ("-1d", sanoid_name(1 * d, "daily")),
    }
    make_old(lab, unmounted, list(old.values()))
    names = {k: v[1] for k, v in old.items()}
    env = vmsnapd_env
    env.datasets[unmounted.name] = dict(THREE)  # hourly 2, daily 2, monthly 1

    away_from_boundaries()
    proc = env.run("once")
    now = snaps(lab, unmounted)
    taken = now - set(names.values())
    # hourly, daily and monthly were missed (for hours, days, a month): each caught up once, one stamp
    assert_made_now(lab, unmounted, taken)
    (stamp,) = stamps(taken)
    assert taken == {f"autosnap_{stamp}_{p}" for p in ("hourly", "daily", "monthly")}, proc.stdout
    # newest N by creation per period: the new one plus h2 (hourly 2), plus d1 (daily 2), the new monthly alone
    assert now == taken | {names["h2"], names["d1"]}, proc.stdout
    destroyed = {names[k] for k in ("m70", "m40", "w10", "hx", "h5", "h4", "h3", "d3", "d2")}
    for name in destroyed:
        assert name in proc.stdout, f"{name} destroyed but not reported:\n{proc.stdout}"

    proc = env.run("once")
    assert snaps(lab, unmounted) == now, proc.stdout  # not twice


def test_sanoid_snapshots_adopted_foreign_and_held_never_destroyed(lab, unmounted, vmsnapd_env):
    h = timedelta(hours=1)
    d = timedelta(days=1)
    ours = {
        "h3": ("-3h", sanoid_name(3 * h, "hourly")),
        "h2": ("-2h", sanoid_name(2 * h, "hourly")),
        "f1": ("-1h", sanoid_name(1 * h, "frequently")),
        "d2": ("-2d", sanoid_name(2 * d, "daily")),
        # older than one day by an hour: sanoid's rule destroys a daily only when it is older than N days, and
        # exactly -1d would race the clock (created in the same second as the pass)
        "d1": ("-25h", sanoid_name(25 * h, "daily")),
    }
    held = sanoid_name(1 * h + timedelta(minutes=5), "hourly")
    foreign = ["manual-1", "autosnap-foo", "autosnap_2026-01-01_00:00:00_hourly-extra",
               "autosnap_2026-01-01_00:00:00_hourlyx", "autosnap_2026-13-01_00:00:00_hourly"]
    make_old(lab, unmounted, list(ours.values()) + [("-100d", n) for n in foreign] + [("-1h", held)])
    lab.zfs("hold", "keep", f"{unmounted}@{held}")
    env = vmsnapd_env
    env.datasets[unmounted.name] = {**PLAIN, "hourly": 0, "daily": 1, "monthly": 0}
    try:
        proc = env.run("once")
        now = snaps(lab, unmounted)
    finally:
        lab.zfs("release", "keep", f"{unmounted}@{held}")
    taken = now - {v[1] for v in ours.values()} - set(foreign) - {held}
    assert_made_now(lab, unmounted, taken)
    assert len(taken) == 1, (taken, proc.stdout)
    (stamp,) = stamps(taken)
    assert taken == {f"autosnap_{stamp}_daily"}
    assert now == taken | set(foreign) | {held}, proc.stdout


def test_autosnap_and_autoprune_off(lab, dataset_factory, vmsnapd_env):
    no_snap, no_prune = dataset_factory(mountpoint="none"), dataset_factory(mountpoint="none")
    old = [("-3h", sanoid_name(timedelta(hours=3), "hourly")), ("-2h", sanoid_name(timedelta(hours=2), "hourly"))]
    make_old(lab, no_snap, old)
    make_old(lab, no_prune, old)
    env = vmsnapd_env
    one_hourly = {**PLAIN, "hourly": 1, "daily": 0, "monthly": 0}
    env.datasets[no_snap.name] = {**one_hourly, "autosnap": False}
    env.datasets[no_prune.name] = {**one_hourly, "autoprune": False}
    env.run("once")
    assert snaps(lab, no_snap) == {old[1][1]}  # nothing taken, pruned to the newest one
    taken = snaps(lab, no_prune) - {n for _, n in old}
    assert len(taken) == 1 and snaps(lab, no_prune) == taken | {n for _, n in old}


# ------------------------------------------------------------------------------------------------------ dry run

def test_dry_run_changes_nothing_and_says_what_a_real_pass_does(lab, unmounted, vmsnapd_env):
    h = timedelta(hours=1)
    old = [("-3h", sanoid_name(3 * h, "hourly")), ("-2h", sanoid_name(2 * h, "hourly"))]
    make_old(lab, unmounted, old)
    env = vmsnapd_env
    env.datasets[unmounted.name] = {**PLAIN, "hourly": 1, "daily": 0, "monthly": 0}
    before = lab.zfs("get", "-H", "-p", "-r", "-o", "name,property,value", "all", unmounted.name)

    away_from_boundaries()
    dry = env.run("once", "--dry-run")
    assert lab.zfs("get", "-H", "-p", "-r", "-o", "name,property,value", "all", unmounted.name) == before
    assert not list((env.state_dir / "cycles").glob("*")) if (env.state_dir / "cycles").exists() else True
    take_line = [line for line in dry.stdout.splitlines() if "would take" in line]
    assert len(take_line) == 1 and re.search(r"autosnap_\S+_hourly", take_line[0]), dry.stdout
    # the one it would take counts for retention, as in a real pass: both old hourlies would go
    destroy_line = [line for line in dry.stdout.splitlines() if "would destroy" in line]
    assert len(destroy_line) == 1, dry.stdout
    would_destroy = set(re.findall(r"autosnap_\S+?_hourly", destroy_line[0]))
    assert would_destroy == {n for _, n in old}, dry.stdout

    env.run("once")
    left = snaps(lab, unmounted)
    assert len(left) == 1 and left.isdisjoint(would_destroy)


# -------------------------------------------------------------------------------------------- snapshot command

def test_snapshot_command(lab, dataset_factory, vmsnapd_env):
    a, b = dataset_factory(mountpoint="none"), dataset_factory(mountpoint="none")
    env = vmsnapd_env
    env.datasets[a.name] = {**PLAIN, "hourly": 1, "daily": 1, "monthly": 1}
    env.datasets[b.name] = {**PLAIN, "hourly": 1, "daily": 1, "monthly": 1}
    proc = env.run("snapshot", a.name, "--period", "daily")
    (name,) = snaps(lab, a)
    assert NAME_RE.fullmatch(name).group(2) == "daily" and name in proc.stdout
    assert snaps(lab, b) == set()

    proc = env.run("snapshot", f"{a.name}-nope", expect=1)
    assert f"{a.name}-nope" in proc.stderr
    proc = env.run("snapshot", a.name, "--period", "fortnightly", expect=2)
    assert "period" in proc.stderr
    assert snaps(lab, a) == {name} and snaps(lab, b) == set()


# ------------------------------------------------------------------------------------------------------ locking

def test_second_pass_waits_then_gives_up_clearly(lab, unmounted, vmsnapd_env):
    env = vmsnapd_env
    env.datasets[unmounted.name] = {**PLAIN, "hourly": 1, "daily": 0, "monthly": 0}
    with pass_lock(env.state_dir, wait_s=0):
        started = time.monotonic()
        proc = env.run("--lock-wait", "1.5", "once", expect=1)
        waited = time.monotonic() - started
    assert waited >= 1.5, waited  # it waited --lock-wait, then gave up (a bound of the behaviour, not a timing)
    assert "another vmsnapd pass" in proc.stderr and f"pid {os.getpid()}" in proc.stderr, proc.stderr
    assert snaps(lab, unmounted) == set()
    env.run("--lock-wait", "1.5", "once")
    assert len(snaps(lab, unmounted)) == 1


def test_second_pass_waits_for_the_first_to_finish(lab, unmounted, vmsnapd_env):
    import threading

    env = vmsnapd_env
    env.datasets[unmounted.name] = {**PLAIN, "hourly": 1, "daily": 0, "monthly": 0}
    held = threading.Event()

    def first_pass():
        with pass_lock(env.state_dir, wait_s=0):
            held.set()
            time.sleep(2)

    holder = threading.Thread(target=first_pass)
    holder.start()
    try:
        assert held.wait(10)
        started = time.monotonic()
        env.run("--lock-wait", "30", "once")
        waited = time.monotonic() - started
    finally:
        holder.join()
    assert waited >= 1.5, f"the second pass did not wait for the lock ({waited:.1f}s)"
    assert len(snaps(lab, unmounted)) == 1


def test_lock_wait_must_be_a_number(vmsnapd_env):
    vmsnapd_env.run("--lock-wait", "soon", "once", expect=2)
    vmsnapd_env.run("--lock-wait", "-1", "once", expect=2)


# ------------------------------------------------------------------------------------------ failure isolation

def test_one_failing_dataset_never_stops_the_others(lab, dataset_factory, vmsnapd_env, tmp_path):
    parent = dataset_factory(mountpoint="none")
    a = dataset_factory(parent.name)
    broken = dataset_factory(parent.name)
    c = dataset_factory(parent.name)
    env = vmsnapd_env
    env.datasets[parent.name] = {**PLAIN, "hourly": 1, "daily": 1, "monthly": 0, "recursive": True,
                                 "process_children_only": True}
    path_env = zfs_wrapper(tmp_path, f'if [ "$1" = snapshot ]; then case "$2" in {broken}@*) '
                                     f'echo "cannot create snapshot \'$2\': out of space" >&2; exit 1;; esac; fi')
    proc = env.run("once", expect=1, env=path_env)
    assert snaps(lab, broken) == set()
    for ds in (a, c):
        assert {NAME_RE.fullmatch(n).group(2) for n in snaps(lab, ds)} == {"hourly", "daily"}, proc.stdout
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and broken.name in failed[0], proc.stdout
    assert "out of space" in proc.stdout


def test_one_dataset_that_cannot_be_pruned_never_stops_the_others(lab, pool, dataset_factory, vmsnapd_env,
                                                                   tmp_path):
    """`zfs destroy` refused on one dataset (a wrapper first on PATH): that dataset fails, alone."""
    parent = dataset_factory(mountpoint="none")
    odd = dataset_factory(parent.name)
    fine = dataset_factory(parent.name)
    doomed = [("-3h", sanoid_name(timedelta(hours=3), "hourly")), ("-2h", sanoid_name(timedelta(hours=2), "hourly"))]
    make_old(lab, odd, doomed)
    make_old(lab, fine, doomed)
    env = vmsnapd_env
    env.datasets[parent.name] = {**PLAIN, "hourly": 0, "daily": 0, "monthly": 0, "recursive": True,
                                 "process_children_only": True}
    path_env = zfs_wrapper(tmp_path, f'if [ "$1" = destroy ]; then case "$2" in {odd}@*) '
                                     f'echo "cannot destroy \'$2\': permission denied" >&2; exit 1;; esac; fi')
    proc = env.run("once", "--prune", expect=1, env=path_env)
    assert snaps(lab, fine) == set(), proc.stdout + proc.stderr
    assert snaps(lab, odd) == {n for _, n in doomed}
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and odd.name in failed[0], proc.stdout


# ------------------------------------------------------------------------------------------------------ configs

def _private_copy(tmp_path: Path, source: Path) -> Path:
    copy = tmp_path / source.name
    copy.write_bytes(source.read_bytes())
    copy.chmod(0o600)
    return copy


def _vmsnapd(*args: str, env: dict | None = None):
    import subprocess
    return subprocess.run([sys.executable, "-m", "vmsnapd", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def _vmsnapd_each(argvs: list[list[str]], env: dict | None = None) -> list:
    """`_vmsnapd` for each argv, a few at a time (each is a separate process that only starts Python and reads a
    config: ~0.5 s, mostly interpreter start; one after another they made this the suite's slowest non-guest test)."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return list(pool.map(lambda argv: _vmsnapd(*argv, env=env), argvs))


def test_invalid_configs_exit_78_naming_the_key_and_touch_nothing(tmp_path):
    log = tmp_path / "zfs-calls"
    path_env = zfs_wrapper(tmp_path, f'echo "$@" >> {log}')
    invalid = sorted((ROOT / "config" / "invalid").glob("*.toml"))
    assert len(invalid) >= 20
    cases = []
    for sample in invalid:
        expected = re.match(rb"# expect: (.+)", sample.read_bytes()).group(1).decode().strip()  # some are not UTF-8
        copy = _private_copy(tmp_path, sample)
        cases += [(sample, expected, copy, args) for args in (["config", "check"], ["once"])]
    procs = _vmsnapd_each([["-c", str(copy), *args] for _, _, copy, args in cases], env=path_env)
    assert len(procs) == len(cases) == 2 * len(invalid)
    problems = [f"{sample.name} {' '.join(args)}: exit {proc.returncode}\n{proc.stderr}"
                for (sample, expected, copy, args), proc in zip(cases, procs, strict=True)
                if proc.returncode != 78 or expected not in proc.stderr or str(copy) not in proc.stderr]
    assert not problems, "\n".join(problems)
    assert not log.exists(), f"zfs ran for an invalid config: {log.read_text()}"


def test_valid_configs_pass_config_check(tmp_path):
    samples = sorted((ROOT / "config" / "valid").glob("*.toml")) + [ROOT / "config" / "vmsnapd.toml"]
    procs = _vmsnapd_each([["-c", str(_private_copy(tmp_path, sample)), "config", "check"] for sample in samples])
    for sample, proc in zip(samples, procs, strict=True):
        assert proc.returncode == 0, f"{sample.name}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert "valid" in proc.stdout


def test_import_sanoid_output_passes_config_check(tmp_path):
    proc = _vmsnapd("import-sanoid", str(ROOT / "config" / "sanoid" / "vm-host.conf"))
    assert proc.returncode == 0, proc.stderr
    converted = tmp_path / "imported.toml"
    converted.write_text(proc.stdout)
    converted.chmod(0o600)
    check = _vmsnapd("-c", str(converted), "config", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "valid" in check.stdout


def test_a_configured_dataset_that_does_not_exist_fails_the_pass(lab, dataset_factory, vmsnapd_env):
    real = dataset_factory()
    env = vmsnapd_env
    env.datasets[real.name] = {"hourly": 1, "daily": 0, "monthly": 0, "domain": "none"}
    typo = f"{real.pool}/no-such-dataset"
    env.datasets[typo] = {"hourly": 1, "daily": 0, "monthly": 0, "domain": "none"}
    proc = env.run("once", expect=1)
    assert f"configured dataset {typo} does not exist" in proc.stdout
    assert len(snaps(lab, real)) == 1  # the others are still taken care of


def test_a_dataset_with_spaces_in_its_name_is_managed(lab, pool, vmsnapd_env):
    """ZFS allows spaces in dataset names; in an argv list (no shell) they are harmless."""
    ds = lab.create_dataset(pool, f"{lab.unique_name('sp')} my vms", mountpoint="none")
    try:
        env = vmsnapd_env
        env.datasets[ds.name] = {"hourly": 1, "daily": 0, "monthly": 0, "domain": "none"}
        env.run("once")
        out = lab.zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", ds.name)
        assert [line.split("@", 1)[1].endswith("_hourly") for line in out.splitlines()] == [True]
        assert "nothing to do" in env.run("once").stdout
    finally:
        lab.destroy_dataset(ds)
