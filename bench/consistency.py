#!/usr/bin/env python3
"""Consistency campaign: N restores under write load, spread over every capture path; each must continue at exactly
the snapshot's max counter + 1 with no record rewritten.

A TCG counter guest (default 256 MiB, dirtying `--dirty-mib` of RAM besides writing its counter records every
~20 ms) on a fresh lab dataset; a fresh one for every restore (see `retire`), booted while the one before is
being restored. Restore k (k = 1..N) uses case k mod 10: method overlay/pause × live/not-live ×
ram_compression none/zstd with the RAM file written on disk (`ram_staging_dir = ""`), and overlay/live and
pause/live with the RAM file staged on tmpfs (`ram_staging_dir` in /dev/shm: the default /run/vmsnapd/staging on a
systemd host, the shortest pause in bench/pause.py):
1. `vmsnapd snapshot DATASET` with that case's config;
2. the snapshot's max counter is read (through a clone), the guest writes on past it;
3. the token disk gets a new token `rK`;
4. `vmsnapd restore DOMAIN SNAPSHOT --force-stop --yes` (rollback + resume from the RAM dump);
5. once the guest writes again: records at or below the snapshot's max carrying the new token mean RAM older than
   the disk (rewritten), a first new counter other than max + 1 means RAM newer than the disk (lab.resume_evidence).
Prints k/N consistent and every failing case in full (config, counters, vmsnapd's output, console tail). The
replaced states stay aside until the pool is destroyed at the end. `--budget S`: no new restore after S seconds
(the count reached is printed as k/K). `--cases` replaces the round of 10 by the paths named, in that order (a
path named twice runs twice per round: a suspect path against its neighbours); `--cpu-load N` adds N bounded busy
loops for the run. A fresh guest that does not boot is replaced and counted apart (the lab's, not a restore's).
Never asserts timings. Exit 0 when all N were consistent, 1 otherwise.

    sudo .venv/bin/python bench/consistency.py [-n 50] [--memory 256] [--dirty-mib 32] [--budget 3600] [--json out.json]
        [--cases pause/live/zstd/tmpfs,pause/not-live/zstd/tmpfs,pause/live/zstd/tmpfs,overlay/live/zstd/tmpfs]
        [--cpu-load 2]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchError, check_ok, lab, tear_down, vmsnapd  # noqa: E402

CASES = [{"method": m, "live": live, "ram_compression": c, "tmpfs": False}
         for m, live, c in itertools.product(("overlay", "pause"), (True, False), ("none", "zstd"))]
# the RAM file staged on a tmpfs (the default ram_staging_dir on a systemd host): the shortest pauses of bench/pause.py
CASES += [{"method": m, "live": True, "ram_compression": "zstd", "tmpfs": True} for m in ("overlay", "pause")]


def case_name(case: dict) -> str:
    return (f"{case['method']}/{'live' if case['live'] else 'not-live'}/{case['ram_compression']}"
            + ("/tmpfs" if case["tmpfs"] else ""))


def parse_case(name: str) -> dict:
    """`METHOD/live|not-live/none|zstd[/tmpfs]` (the names `case_name` prints) as a case; ValueError otherwise."""
    parts = name.strip().split("/")
    if not (3 <= len(parts) <= 4 and parts[0] in ("overlay", "pause") and parts[1] in ("live", "not-live")
            and parts[2] in ("none", "zstd") and parts[3:] in ([], ["tmpfs"])):
        raise ValueError(f"not a case: {name!r} (METHOD/live|not-live/none|zstd[/tmpfs], e.g. {case_name(CASES[0])})")
    return {"method": parts[0], "live": parts[1] == "live", "ram_compression": parts[2], "tmpfs": len(parts) == 4}


def rotation(spec: str) -> list[dict]:
    """The cases of one round, in order: every path by default, else `--cases` as written (a name given twice
    runs twice per round, so a suspect path can get more restores than its neighbours, interleaved)."""
    return [parse_case(n) for n in spec.split(",") if n.strip()] if spec.strip() else list(CASES)


def start_cpu_load(workers: int, seconds: float) -> list[subprocess.Popen]:
    """`workers` busy loops (added CPU load, like `stress -c N`), each ending by itself after `seconds` at the
    latest; killed by pid in main's finally."""
    loop = f"import time\nend = time.monotonic() + {seconds:.0f}\nwhile time.monotonic() < end:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(workers)]


def stop_cpu_load(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


def staging_dir(root: Path, name: str) -> Path:
    """A RAM staging folder on tmpfs for guest `name` (vmsnapd creates its last part, 0700; tear_down removes
    /dev/shm/<root's name>)."""
    path = Path("/dev/shm") / root.name / name
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path / "staging"


def one_restore(root: Path, g: Guest, k: int, case: dict) -> dict:
    ds, vm = g.ds, g.vm
    config = g.config = lab.write_vmsnapd_config(root / vm.name, {ds.name: {"domain": vm.name, "method": case["method"],
                                                      "live": case["live"], "memory": True, "quiesce": "off",
                                                      "hourly": 100}},
                                      daemon={"ram_compression": case["ram_compression"],
                                              "ram_staging_dir": str(staging_dir(root, vm.name)) if case["tmpfs"]
                                              else ""})
    before = set(lab.snapshot_names(ds.name))
    took = vmsnapd(config, "snapshot", ds.name)
    check_ok(took, f"restore {k}: vmsnapd snapshot ({case_name(case)})")
    (snap,) = sorted(set(lab.snapshot_names(ds.name)) - before)
    at_snapshot = lab.snapshot_max_counter(f"{ds.name}@{snap}", vm.disk.relpath)
    lab.wait_counter_advances(vm, by=10, start=at_snapshot, timeout=60)
    token = f"r{k}"
    lab.write_token(vm, token)
    t0 = time.monotonic()
    restored = vmsnapd(config, "restore", vm.name, snap, "--force-stop", "--yes")
    restore_s = time.monotonic() - t0
    result = {"k": k, "case": case_name(case), "snapshot": snap, "at_snapshot": at_snapshot, "restore_s": restore_s,
              "restore_rc": restored.returncode}
    if restored.returncode != 0:
        return {**result, "ok": False, "why": "restore failed", "stdout": restored.stdout[-3000:],
                "stderr": restored.stderr[-3000:], "snapshot_log": took.stderr[-2000:]}
    try:
        lab.wait_counter_advances(vm, by=10, start=at_snapshot, timeout=60)
    except lab.LabError as e:
        return {**result, "ok": False, "why": f"guest did not write after the restore: {str(e)[:200]}",
                "stdout": restored.stdout[-3000:], "stderr": restored.stderr[-3000:],
                "snapshot_log": took.stderr[-2000:], "console": vm.console()}
    rewritten, first_new = lab.resume_evidence(vm, at_snapshot, token)
    ok = not rewritten and first_new == at_snapshot + 1
    result.update(ok=ok, rewritten=rewritten[:20], first_new=first_new)
    if not ok:
        result.update(why=("RAM older than the disk: records rewritten" if rewritten else
                           f"RAM newer than the disk: resumed at {first_new}, expected {at_snapshot + 1}"),
                      stdout=restored.stdout[-3000:], stderr=restored.stderr[-3000:],
                      snapshot_log=took.stderr[-2000:], console=vm.console())
    return result


@dataclass
class Guest:
    ds: object
    vm: object
    config: Path | None = None


def new_guest(pool, root: Path, i: int | str, args) -> Guest:
    """A fresh counter guest on a fresh dataset, started without waiting: it boots while the current restore runs."""
    ds = lab.create_dataset(pool, name=f"guest{i}")
    vm = lab.create_vm(ds, memory_mib=args.memory, dirty_mib=min(args.dirty_mib, args.memory // 8), wait=False)
    (root / vm.name).mkdir(mode=0o755)
    (root / vm.name / "overlay").mkdir(mode=0o711)
    return Guest(ds, vm)


def retire(g: Guest) -> None:
    """A restored guest's replaced state stays aside, and the next restore of it would refuse until that is
    dropped — which zfs-fuse refused as "busy" for minutes after the VM stopped. So every successful restore
    gets a fresh guest; the old one's domain goes now, its datasets with the pool at the end."""
    lab.destroy_vm(g.vm)


def ready_guest(g: Guest, pool, root: Path, k: int, args: argparse.Namespace, boot_failures: list[str]) -> Guest:
    """`g` once it writes, else (a fresh TCG guest that never wrote: it did not boot, e.g. "IO-APIC + timer
    doesn't work" when the host is very loaded) a replacement — up to 3 in a row; a boot failure is the lab's,
    not a restore's, so it is counted apart (printed, and in the JSON) and the campaign goes on."""
    for attempt in range(1, 4):
        try:
            lab.wait_counter_advances(g.vm, by=20, timeout=120)
            return g
        except lab.LabError as e:
            if g.vm.max_counter() > 0 or attempt == 3:
                raise
            boot_failures.append(f"before restore {k}: {g.vm.name}: {str(e)[-1500:]}")
            print(f"  guest {g.vm.name} did not boot (lab, not a restore): a fresh one; console tail:\n    "
                  + g.vm.console()[-600:].replace("\n", "\n    "), flush=True)
            retire(g)
            g = new_guest(pool, root, f"{k}b{attempt}", args)
    raise AssertionError("unreachable")


def run_restores(args: argparse.Namespace, pool, root: Path, cases: list, results: list[dict],
                 boot_failures: list[str]) -> None:
    """The campaign: restore after restore, a fresh guest after every successful one, until -n or the budget."""
    current, upcoming = new_guest(pool, root, 0, args), None
    deadline = time.monotonic() + args.budget
    for k in range(1, args.n + 1):
        if time.monotonic() > deadline:
            print(f"  budget of {args.budget} s spent: stopping after {k - 1} restores", flush=True)
            break
        case = cases[(k - 1) % len(cases)]
        if upcoming is None:
            upcoming = new_guest(pool, root, k, args)
        current = ready_guest(current, pool, root, k, args, boot_failures)
        r = one_restore(root, current, k, case)
        r["load_avg"] = round(os.getloadavg()[0], 1)
        results.append(r)
        if args.json:  # after every restore: a failure's full console survives a campaign cut short
            write_json(args.json, results, boot_failures)
        if r["restore_rc"] == 0:
            retire(current)
            current, upcoming = upcoming, None
        print(f"  {k:3d}/{args.n} {r['case']:24s} snapshot max {r['at_snapshot']:6d} first new "
              f"{r.get('first_new', '-')!s:>6s} rewritten {len(r.get('rewritten', []))} restore "
              f"{r['restore_s']:5.1f}s load {r['load_avg']:4.1f}  {'ok' if r['ok'] else 'FAILED: ' + r['why']}", flush=True)
        if not r["ok"]:
            print("    " + (r.get("stderr") or "").strip()[-600:].replace("\n", "\n    "), flush=True)
            print("    console: " + (r.get("console") or "")[-1500:].replace("\n", "\n    "), flush=True)


def summarize(results: list[dict]) -> int:
    good = sum(r["ok"] for r in results)
    print(f"\n{good}/{len(results)} restores consistent (continued at exactly snapshot max + 1, nothing rewritten)")
    for name in dict.fromkeys(r["case"] for r in results):
        rr = [r for r in results if r["case"] == name]
        print(f"  {name:24s} {sum(r['ok'] for r in rr)}/{len(rr)}")
    for r in results:
        if not r["ok"]:
            print("\nFAILED CASE\n" + json.dumps(r, indent=1))
    return good


def write_json(path: Path, results: list[dict], boot_failures: list[str] | None = None) -> None:
    good = sum(r["ok"] for r in results)
    path.write_text(json.dumps({"results": results, "consistent": good, "total": len(results),
                                "guest_boot_failures": boot_failures or []}, indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=50, help="number of restores (default 50)")
    ap.add_argument("--memory", type=int, default=256, help="guest RAM in MiB (default 256)")
    ap.add_argument("--dirty-mib", type=int, default=32, help="RAM the guest dirties continuously (default 32)")
    ap.add_argument("--budget", type=float, default=3600, help="no new restore after this many seconds (3600)")
    ap.add_argument("--cases", default="", help="the cases of one round, comma-separated, in order; a name given "
                    "twice runs twice per round; any METHOD/live|not-live/none|zstd[/tmpfs] (default: the 10 paths)")
    ap.add_argument("--cpu-load", type=int, default=0, help="busy loops added for the whole run (default 0)")
    ap.add_argument("--json", type=Path, help="write the results here (for bench/report.py)")
    args = ap.parse_args()
    pool = root = None
    results: list[dict] = []
    boot_failures: list[str] = []
    load: list[subprocess.Popen] = []
    try:
        cases = rotation(args.cases)
        lab.check_lab()
        root = lab.make_run_dir("consist")
        pool = lab.create_pool("2G")
        load = start_cpu_load(args.cpu_load, args.budget + 900)
        print(f"fresh {args.memory} MiB counter guests dirtying {min(args.dirty_mib, args.memory // 8)} MiB; "
              f"{args.n} restores, rounds of {', '.join(map(case_name, cases))}; {args.cpu_load} busy loops added "
              f"(load average {os.getloadavg()[0]:.1f}); no new restore after {args.budget} s", flush=True)
        run_restores(args, pool, root, cases, results, boot_failures)
    except (BenchError, lab.LabError, ValueError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        cut_short = True
    else:
        cut_short = False
    finally:
        stop_cpu_load(load)
        tear_down(pool, root)
    good = summarize(results)  # also of a campaign cut short: what it measured until then
    if boot_failures:
        print(f"{len(boot_failures)} fresh guest(s) did not boot and were replaced (the lab's, not a restore's)")
    if args.json:
        write_json(args.json, results, boot_failures)
    return 0 if good == len(results) and not cut_short else 1


if __name__ == "__main__":
    sys.exit(main())
