#!/usr/bin/env python3
"""A take+prune pass at scale (issue 13, goal 2): `sanoid --cron` against `vmsnapd once`, side by side, on two
identical trees of 100 datasets x 70 really aged hourly snapshots.

Each tree: a parent (mountpoint=none) with children vm01..vm100, each with 70 hourlies `autosnap_<ts>_hourly`
aged 11..80 h, taken while the zfs-fuse daemon's clock is shifted (the lab's libfaketime), so `creation` matches
the name. Policy for both: hourly=10, daily=2, monthly=1, children only: each tool takes a daily and a monthly
(and sanoid an hourly) per dataset and destroys ~60 hourlies per dataset, ~6,000 in all. Every `zfs`/`zpool`
call of either tool is logged by the wrapper of bench/prune_vs_sanoid.py (first on PATH): that is how calls are
counted. zfs-fuse destroys one snapshot per call (no `ds@a,b,c`), so vmsnapd here runs with its zfs-fuse path:
datasets pruned side by side (`[daemon] zfs_jobs`, default 4), one destroy per call.

Prints a table: wall time, zfs calls (listings, snapshots, destroys), snapshots taken/destroyed, and the ratio
vmsnapd/sanoid (goal: wall time <= 0.3x). Writes bench/results/scale_vs_sanoid-<time>.json. Never asserts
timings. Exit 0 when both tools ran cleanly, 1 otherwise.

    sudo .venv/bin/python bench/scale_vs_sanoid.py [--datasets 100] [--snapshots 70] [--jobs N] [--repeat 1]
"""
from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prune_vs_sanoid as pvs  # noqa: E402
from _common import BenchError, destroy_pool_patiently, lab, median, remove_tree  # noqa: E402
from _scale import table, write_results  # noqa: E402

NEWEST_H = 11


def listing_calls(kinds_log: Path) -> int:
    """`zfs list`/`zfs get` calls that read a tree (`-r`, `-d N` with N > 0): the per-pass listings."""
    if not kinds_log.exists():
        return 0
    n = 0
    for line in kinds_log.read_text().splitlines():
        words = line.split()
        recursive = any(w.startswith("-") and "r" in w for w in words) or (
            "-d" in words and words.index("-d") + 1 < len(words) and words[words.index("-d") + 1] != "0")
        if words[:1] in (["list"], ["get"]) and recursive:  # not vmsnapd's dialect probe `list ... -d 0`
            n += 1
    return n


def one_round(idx: int, n_datasets: int, n_snaps: int, jobs: int | None, sanoid: str, bindir: Path,
              sanoid_first: bool) -> dict[str, dict]:
    pvs.OLDEST_H, pvs.NEWEST_H = NEWEST_H + n_snaps - 1, NEWEST_H
    pools = []
    root = lab.make_run_dir("scale")
    try:
        for _ in range(2):
            pools.append(lab.create_pool("2G").name)
        parents = {"sanoid": f"{pools[0]}/VM", "vmsnapd": f"{pools[1]}/VM"}
        t0 = time.monotonic()
        pvs.build_trees(list(parents.values()), n_datasets, dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))
        print(f"  round {idx}: built 2 trees of {n_datasets} datasets x {n_snaps} hourlies aged "
              f"{pvs.NEWEST_H}-{pvs.OLDEST_H} h in {time.monotonic() - t0:.0f}s", flush=True)
        confdir = root / "sanoid"
        confdir.mkdir()
        shutil.copy("/usr/share/sanoid/sanoid.defaults.conf", confdir / "sanoid.defaults.conf")
        tmpl = "\n".join(f"\t{k} = {v}" for k, v in pvs.POLICY.items())
        (confdir / "sanoid.conf").write_text(
            f"[{parents['sanoid']}]\n\tuse_template = bench\n\trecursive = yes\n\tprocess_children_only = yes\n\n"
            f"[template_bench]\n{tmpl}\n\tautosnap = yes\n\tautoprune = yes\n")
        daemon = {"zfs_jobs": jobs} if jobs else {}
        config = lab.write_vmsnapd_config(
            root, {parents["vmsnapd"]: {"use_template": "bench", "recursive": True, "process_children_only": True,
                                        "domain": "none"}},
            templates={"bench": {**pvs.POLICY, "autosnap": True, "autoprune": True}}, daemon=daemon)
        runs = {
            "sanoid": lambda: pvs.run_tool("sanoid", [sanoid, "--cron", "--configdir", str(confdir),
                                                      "--cache-dir", str(root / "sanoid-cache"),
                                                      "--run-dir", str(root / "sanoid-run")],
                                           parents["sanoid"], bindir, root / "calls-sanoid", None, timeout=3600),
            "vmsnapd": lambda: pvs.run_tool("vmsnapd", ["once"], parents["vmsnapd"], bindir, root / "calls-vmsnapd",
                                            config, timeout=3600),
        }
        order = ["sanoid", "vmsnapd"] if sanoid_first else ["vmsnapd", "sanoid"]
        res = {}
        for tool in order:
            r = runs[tool]()
            r["listings"] = listing_calls(root / f"calls-{tool}.zfs")
            res[tool] = r
            print(f"  round {idx}: {tool:8s} {r['wall']:6.1f}s  zfs calls {r['zfs']} "
                  f"({', '.join(f'{k} {v}' for k, v in sorted(r['kinds'].items()))}; listings {r['listings']}; "
                  f"zpool {r['zpool']})  taken {r['taken']}  destroyed {r['destroyed']}", flush=True)
        return res
    finally:
        t0 = time.monotonic()
        for p in pools:
            destroy_pool_patiently(p)
        print(f"  round {idx}: pools destroyed in {time.monotonic() - t0:.0f}s", flush=True)
        remove_tree(root)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", type=int, default=100)
    ap.add_argument("--snapshots", type=int, default=70)
    ap.add_argument("--jobs", type=int, default=None, help="[daemon] zfs_jobs for vmsnapd (default: its default)")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    results = []
    try:
        lab.check_lab()
        sanoid = pvs.ensure_sanoid()
        bindir = lab.LAB_DIR / "runs" / lab.unique_name("zfswrap")
        pvs.make_wrappers(bindir)
        try:
            print(f"sanoid --cron vs vmsnapd once: {args.datasets} datasets x {args.snapshots} hourlies aged "
                  f"{NEWEST_H}-{NEWEST_H + args.snapshots - 1} h; hourly=10 daily=2 monthly=1; zfs-fuse",
                  flush=True)
            retries = 2
            while len(results) < args.repeat:
                i = len(results)
                try:
                    results.append(one_round(i + 1, args.datasets, args.snapshots, args.jobs, sanoid, bindir,
                                             sanoid_first=i % 2 == 0))
                except pvs.ClockDisturbed as e:
                    if retries == 0:
                        raise
                    retries -= 1
                    print(f"  round {i + 1} disturbed by another lab session, running it again: {e}", flush=True)
        finally:
            remove_tree(bindir)
    except (BenchError, lab.LabError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1

    keys = ("wall", "zfs", "listings", "zpool", "taken", "destroyed")
    med = {tool: {k: median([r[tool][k] for r in results]) for k in keys} for tool in ("sanoid", "vmsnapd")}
    kinds = {tool: results[-1][tool]["kinds"] for tool in ("sanoid", "vmsnapd")}
    s, v = med["sanoid"], med["vmsnapd"]

    def rat(a, b):
        return f"{a / b:.2f}x" if b else "n/a"

    rows = [("wall time (s)", f"{s['wall']:.1f}", f"{v['wall']:.1f}", rat(v["wall"], s["wall"])),
            ("zfs calls", f"{s['zfs']:.0f}", f"{v['zfs']:.0f}", rat(v["zfs"], s["zfs"])),
            ("  of which listings (-r/-d)", f"{s['listings']:.0f}", f"{v['listings']:.0f}", ""),
            ("  snapshot calls", kinds["sanoid"].get("snapshot", 0), kinds["vmsnapd"].get("snapshot", 0), ""),
            ("  destroy calls", kinds["sanoid"].get("destroy", 0), kinds["vmsnapd"].get("destroy", 0), ""),
            ("zpool calls", f"{s['zpool']:.0f}", f"{v['zpool']:.0f}", ""),
            ("snapshots taken", f"{s['taken']:.0f}", f"{v['taken']:.0f}", ""),
            ("snapshots destroyed", f"{s['destroyed']:.0f}", f"{v['destroyed']:.0f}", ""),
            ("ms per destroyed snapshot", f"{1000 * s['wall'] / max(s['destroyed'], 1):.1f}",
             f"{1000 * v['wall'] / max(v['destroyed'], 1):.1f}", "")]
    print()
    print(f"median of {len(results)} round(s); {args.datasets} datasets x {args.snapshots} aged hourlies, zfs-fuse")
    print(table(rows, ("", "sanoid", "vmsnapd", "vmsnapd/sanoid")))
    print(f"goal: wall time <= 0.30x sanoid -> {rat(v['wall'], s['wall'])} "
          f"({'met' if v['wall'] <= 0.3 * s['wall'] else 'NOT met'}) in this run (a shared 2-core machine: noisy)")
    path = write_results("scale_vs_sanoid", {"datasets": args.datasets, "snapshots": args.snapshots,
                                            "zfs_jobs": args.jobs or "default", "median": med,
                                            "rounds": results},
                         [{"what": f"take+prune pass, {args.datasets} datasets x {args.snapshots} aged snapshots",
                           "value": f"{rat(v['wall'], s['wall'])} sanoid ({v['wall']:.1f} s vs {s['wall']:.1f} s), "
                                    f"zfs calls {v['zfs']:.0f} vs {s['zfs']:.0f}, listings {v['listings']:.0f}",
                           "goal": f"<= 0.30x ({'met' if v['wall'] <= 0.3 * s['wall'] else 'NOT met'})"}])
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
