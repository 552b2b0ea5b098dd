#!/usr/bin/env python3
"""The daemon idle and large (issue 13, goal 4): 1,000 configured datasets, nothing due.

What is real: a lab pool with a parent (mountpoint=none) and 1,000 child datasets, all real zfs-fuse datasets,
each configured by its own `[datasets."…"]` table (one template), domain = "none"; every period of the policy
(hourly=24 daily=7 monthly=3) already has a snapshot taken now (`zfs snapshot -r`, one call per period), so a pass
has nothing to take and nothing to prune. No VM: the 1,000 datasets stand for the disks of many guests, and a
nothing-due pass never talks to libvirt for them. Every `zfs`/`zpool` call goes through the counting wrapper of
bench/prune_vs_sanoid.py.

Measured (goals in brackets): the daemon (`vmsnapd run`) - RSS once its first pass is done and it idles
[<= 80 MB], that nothing-due pass as the daemon itself reports it [<= 1 s] and its zfs calls [one listing];
`vmsnapd once` of the same (a fresh process: Python start included); `vmsnapd config check` [<= 1 s]. Then the
daemon's pass and `config check` once more with a `zfs` that answers the one listing call instantly with the output
zfs-fuse gave (everything else real): zfs-fuse lists ~4,000 objects in seconds on the loaded lab, where OpenZFS
takes a fraction of a second, so this separates vmsnapd's own share from zfs-fuse's. Prints a
table, writes bench/results/idle_scale-<time>.json. Never asserts timings; exit 0 when every command worked.

    sudo .venv/bin/python bench/idle_scale.py [--datasets 1000]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prune_vs_sanoid as pvs  # noqa: E402
from _common import PYTHON, REPO, BenchError, check_ok, destroy_pool_patiently, lab, remove_tree, vmsnapd  # noqa: E402
from _scale import goal_rows, table, write_results  # noqa: E402

POLICY = {"hourly": 24, "daily": 7, "weekly": 0, "monthly": 3, "yearly": 0, "frequently": 0}


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def listings(lines: list[str]) -> int:
    return sum(1 for line in lines if line.split()[:1] in (["get"], ["list"]) and " -r " in f" {line} ")


def build(parent: str, n: int) -> None:
    lab.zfs("create", "-o", "mountpoint=none", parent)
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda i: lab.zfs("create", f"{parent}/d{i:04d}"), range(n)))
    now = dt.datetime.now(dt.timezone.utc)
    for period, keep in POLICY.items():
        if keep:
            lab.zfs("snapshot", "-r", f"{parent}@autosnap_{now:%Y-%m-%d_%H:%M:%S}_{period}")


def run_daemon(config: Path, env: dict, timeout: float = 300) -> dict:
    """Start `vmsnapd run`, wait for its first pass's summary line, let it idle, read its RSS, stop it."""
    err = config.parent / "daemon.err"
    with open(err, "w") as f:
        proc = subprocess.Popen([PYTHON, "-m", "vmsnapd", "-c", str(config), "-v", "run"], stdout=subprocess.DEVNULL,
                                stderr=f, env=env, cwd=str(REPO), start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        summary = None
        while time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"pass 1: (\d+) snapshot\(s\) taken, (\d+) destroyed.*?(\d+) failure\(s\) in (\d+) ms",
                          err.read_text())
            if m:
                summary = m
                break
            time.sleep(0.2)
        if summary is None:
            raise BenchError(f"the daemon reported no pass in {timeout}s (exit {proc.poll()}):\n"
                             f"{err.read_text()[-3000:]}")
        time.sleep(3)  # idle after the pass: what it holds between passes
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss_kb = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))
        hwm_kb = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))
        return {"taken": int(summary.group(1)), "destroyed": int(summary.group(2)),
                "failures": int(summary.group(3)), "pass_ms": int(summary.group(4)), "rss_mb": rss_kb / 1024,
                "peak_rss_mb": hwm_kb / 1024}
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


CANNED = """#!/bin/sh
# idle_scale.py: answer vmsnapd's listing with the output zfs-fuse gave a moment ago, at once; the rest is real
if [ "$1" = get ] && [ "$3" = -p ] && [ "$4" = -r ]; then cat '{out}'; exit 0; fi
exec {real} "$@"
"""


def canned_zfs(logged: list[str], bindir: Path) -> float:
    """Run the daemon's listing call once more directly (real zfs): its time is zfs-fuse's share of a pass. Keep its
    output and put a `zfs` in `bindir` that answers that listing with it instantly, so that a pass run with it
    measures vmsnapd's own share (parsing, policy, planning) without zfs-fuse's."""
    argv = next(line.split() for line in logged if line.startswith("get "))
    t0 = time.monotonic()
    proc = subprocess.run([pvs.real_tool("zfs"), *argv], capture_output=True, check=True)
    took = time.monotonic() - t0
    bindir.mkdir()
    (bindir / "listing.out").write_bytes(proc.stdout)
    (bindir / "zfs").write_text(CANNED.format(out=bindir / "listing.out", real=pvs.real_tool("zfs")))
    (bindir / "zfs").chmod(0o755)
    return took


def timed(config: Path, env: dict, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    proc = vmsnapd(config, *args, env=env)
    return time.monotonic() - t0, proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", type=int, default=1000)
    args = ap.parse_args()
    pool = root = None
    out: dict = {"datasets": args.datasets, "real": f"{args.datasets} real zfs-fuse datasets, one table each, "
                 "domain none; snapshots taken with zfs snapshot -r"}
    try:
        lab.check_lab()
        root = lab.make_run_dir("idle")
        pool = lab.create_pool("2G")
        parent = f"{pool.name}/VM"
        t0 = time.monotonic()
        build(parent, args.datasets)
        print(f"{args.datasets} real datasets under {parent}, 3 snapshots each: built in "
              f"{time.monotonic() - t0:.0f}s", flush=True)
        config = lab.write_vmsnapd_config(
            root, {f"{parent}/d{i:04d}": {"use_template": "idle", "domain": "none"} for i in range(args.datasets)},
            templates={"idle": {**POLICY, "autosnap": True, "autoprune": True}})
        print(f"config: {config} ({config.stat().st_size // 1024} KiB, {args.datasets} dataset tables)", flush=True)
        bindir = root / "bin"
        pvs.make_wrappers(bindir)
        # Bytecode cached as in an installed venv (the lab's shell may set PYTHONDONTWRITEBYTECODE, which makes
        # every start compile vmsnapd and its libraries again: ~0.5 s more per command on this machine).
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}
        timed(config, env, "--version")  # warm the bytecode cache

        def logged(name: str) -> dict:
            return {**env, "BENCH_CALL_LOG": str(root / f"calls-{name}")}

        with lab.faketime("+0"):
            d = run_daemon(config, logged("daemon"))
            d["zfs_calls"] = calls(root / "calls-daemon.zfs")
            once_s, proc = timed(config, logged("once"), "once")
            check_ok(proc, "vmsnapd once")
            once_calls = calls(root / "calls-once.zfs")
            check_s, proc = timed(config, logged("check"), "config", "check")
            check_ok(proc, "vmsnapd config check")
            check_calls = calls(root / "calls-check.zfs")
            help_s, _ = timed(config, env, "--version")
            listing_s = canned_zfs(d["zfs_calls"], root / "canned")
            canned_env = {**env, "PATH": f"{root / 'canned'}:{env['PATH']}"}
            canned = run_daemon(config, canned_env)
            canned_check_s, proc = timed(config, canned_env, "config", "check")
            check_ok(proc, "vmsnapd config check (canned listing)")
        out.update(daemon=d, once={"wall_s": once_s, "zfs_calls": once_calls},
                   config_check={"wall_s": check_s, "zfs_calls": check_calls}, python_start_s=help_s,
                   zfs_listing_s=listing_s, canned={"daemon": canned, "config_check_s": canned_check_s})
    except (BenchError, lab.LabError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        if pool is not None:
            destroy_pool_patiently(pool)
        if root is not None:
            remove_tree(root)

    d = out["daemon"]
    if d["taken"] or d["destroyed"]:
        print(f"NOTE: the pass was not a nothing-due pass ({d['taken']} taken, {d['destroyed']} destroyed): an "
              "hour boundary passed during the run? Run it again.")

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    rows = [
        ("daemon idle RSS (MB)", f"{d['rss_mb']:.1f}", "<= 80", verdict(d["rss_mb"] <= 80)),
        ("daemon peak RSS (MB)", f"{d['peak_rss_mb']:.1f}", "", ""),
        ("daemon nothing-due pass (s)", f"{d['pass_ms'] / 1000:.2f}", "<= 1", verdict(d["pass_ms"] <= 1000)),
        ("  its zfs calls (listings)", f"{len(d['zfs_calls'])} ({listings(d['zfs_calls'])})", "1 listing",
         verdict(listings(d["zfs_calls"]) == 1)),
        ("  that listing alone, zfs-fuse (s)", f"{out['zfs_listing_s']:.2f}", "", ""),
        ("  the pass, listing answered at once (s)", f"{out['canned']['daemon']['pass_ms'] / 1000:.2f}", "<= 1",
         verdict(out["canned"]["daemon"]["pass_ms"] <= 1000)),
        ("vmsnapd once, whole process (s)", f"{out['once']['wall_s']:.2f}", "", ""),
        ("  its zfs calls (listings)",
         f"{len(out['once']['zfs_calls'])} ({listings(out['once']['zfs_calls'])})", "", ""),
        ("config check, whole process (s)", f"{out['config_check']['wall_s']:.2f}", "<= 1",
         verdict(out["config_check"]["wall_s"] <= 1)),
        ("  its zfs calls", f"{len(out['config_check']['zfs_calls'])}", "", ""),
        ("  listing answered at once (s)", f"{out['canned']['config_check_s']:.2f}", "<= 1",
         verdict(out["canned"]["config_check_s"] <= 1)),
        ("daemon idle RSS, canned run (MB)", f"{out['canned']['daemon']['rss_mb']:.1f}", "<= 80",
         verdict(out["canned"]["daemon"]["rss_mb"] <= 80)),
        ("python start (vmsnapd --version, s)", f"{out['python_start_s']:.2f}", "", ""),
    ]
    print()
    print(f"{args.datasets} configured datasets (real, zfs-fuse), nothing due. 'listing answered at once': the same "
          "run with a `zfs` that answers vmsnapd's one listing call with the output zfs-fuse gave (vmsnapd's own "
          "share: Python, parsing, policy)")
    print(table(rows, ("", "measured", "goal", "")))
    print("zfs calls of the daemon's pass:", *(c if len(c) < 160 else c[:150] + f" … ({len(c.split()) - 8} names)"
                                              for c in d["zfs_calls"]), sep="\n  ")
    ratios = goal_rows(rows, lambda r: str(r[1]), 2)
    print(f"results: {write_results('idle_scale', out, ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
