#!/usr/bin/env python3
"""Where a pass's time goes (issue 13, goal 3, the profiling half): N running counter guests stay up while
`vmsnapd --debug once --take` runs over 1 of them and over all N, round after round, and for each pass:

- the wall time, and each cycle's steps on a per-guest timeline (vmsnapd's own --debug lines, with milliseconds
  and the thread: a cycle's journal states, the commands the runner starts and how long each took, libvirt's
  snapshot call, the RAM file kept);
- CPU seconds used during the pass by vmsnapd (with the commands it ran), each guest's QEMU, zfs-fuse, libvirtd,
  virtlogd, every other QEMU on the host (other people's guests) and the whole host (/proc/stat: busy vs idle of
  all cores), so "the machine was saturated" is a number, not a guess;
- optionally (`--py-spy [cpu|idle]`) a `py-spy record` of the vmsnapd process (raw folded stacks; `idle`: waiting
  threads too, e.g. a call waiting for libvirtd).

Between passes the guests' snapshots and RAM dumps are removed, so the same period is due again. Prints one
table per pass and writes everything (the log too) to bench/results/pass_profile-<time>/. Never asserts timings.

    sudo .venv/bin/python bench/pass_profile.py [-n 8] [--rounds 2] [--max-parallel N] [--py-spy]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PYTHON, REPO, BenchError, lab, median, tear_down  # noqa: E402
from many_vms import start_guests  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
LINE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) (\w+) \[([^\]]+)\] ([\w.]+): (.*)$")
DOMAIN = re.compile(r"domain=(\S+)")


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def host_cpu() -> tuple[float, float]:
    """(busy, idle) seconds of all cores together, from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    return (sum(parts[:8]) - idle) / TICK, idle / TICK


def pids_named(name: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == name:
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def cpu_by_command() -> dict[int, tuple[str, float]]:
    """Every process: pid -> (command name, CPU seconds so far)."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                comm = (d / "comm").read_text().strip()
            except OSError:
                continue
            out[int(d.name)] = (comm, cpu_of(int(d.name)))
    return out


def top_commands(before: dict, after: dict, n: int = 8) -> dict[str, float]:
    """CPU seconds used between two `cpu_by_command` readings, summed by command name (kernel threads with a
    number, e.g. kworker/1:2, summed by their stem), the `n` biggest; processes born and gone in between are
    not seen (the commands vmsnapd runs count in vmsnapd's figure)."""
    used: dict[str, float] = defaultdict(float)
    for pid, (comm, cpu) in after.items():
        was = before.get(pid)
        used[re.split(r"[/:]", comm)[0]] += cpu - (was[1] if was and was[0] == comm else 0.0)
    return dict(sorted(((k, round(v, 2)) for k, v in used.items() if v > 0.005), key=lambda kv: -kv[1])[:n])


def qemu_pid(domain: str) -> int | None:
    try:
        return int(Path(f"/run/libvirt/qemu/{domain}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def clear(guests: list, root: Path) -> None:
    """Every snapshot of the guests' datasets and every RAM dump: the next pass finds its period due again."""
    for ds, _ in guests:
        for snap in lab.snapshot_names(ds.name):
            lab.zfs("destroy", f"{ds.name}@{snap}")
    shutil.rmtree(root / "ram", ignore_errors=True)


def idle_baseline(guests: list, seconds: float = 5.0) -> dict:
    """What the running guests take of the host with no pass at all: their QEMUs' CPU seconds over `seconds`."""
    pids = [qemu_pid(vm.name) for _, vm in guests]
    q0, (b0, i0) = sum(cpu_of(p) for p in pids if p), host_cpu()
    time.sleep(seconds)
    q1, (b1, i1) = sum(cpu_of(p) for p in pids if p), host_cpu()
    return {"seconds": seconds, "qemu_s": round(q1 - q0, 2), "busy_s": round(b1 - b0, 2), "idle_s": round(i1 - i0, 2),
            "cores": os.cpu_count()}


def write_config(root: Path, guests: list, max_parallel: int, staging: Path, method: str | None) -> Path:
    datasets = {ds.name: {"domain": vm.name, "memory": True, "quiesce": "off", "hourly": 3, "daily": 0,
                          "monthly": 0, **({"method": method} if method else {})} for ds, vm in guests}
    return lab.write_vmsnapd_config(root, datasets, daemon={"max_parallel": max_parallel,
                                                            "ram_staging_dir": str(staging / "staging")})


def timeline(log: str, t0_wall: float) -> dict:
    """Per thread: [(ms since the pass started, level, logger, message)]; and which domain each thread served."""
    day = time.strftime("%Y-%m-%d", time.localtime(t0_wall))
    base = time.mktime(time.strptime(day, "%Y-%m-%d"))
    lines: dict[str, list] = defaultdict(list)
    domains: dict[str, str] = {}
    for raw in log.splitlines():
        m = LINE.match(raw)
        if not m:
            continue
        h, mi, s, ms, level, thread, logger, msg = m.groups()
        at = base + int(h) * 3600 + int(mi) * 60 + int(s) + int(ms) / 1000
        lines[thread].append((round((at - t0_wall) * 1000), level, logger, msg))
        d = DOMAIN.search(msg)
        if d and thread not in domains and d.group(1) != "-":
            domains[thread] = d.group(1)
    return {"threads": dict(lines), "domains": domains}


def steps(tl: dict) -> dict[str, list[tuple[int, str]]]:
    """A short step list per domain: journal states, commands and how long they took, RAM kept, done."""
    out: dict[str, list[tuple[int, str]]] = {}
    for thread, lines in tl["threads"].items():
        who = tl["domains"].get(thread, thread)
        mine = []
        for at, _level, logger, msg in lines:
            if msg.startswith("exec "):
                argv = re.findall(r"'([^']*)'", msg)
                mine.append((at, "exec " + " ".join(argv[:3])))
            elif msg.startswith("exit "):
                mine.append((at, msg))
            elif " → " in msg or "cycle " in msg or logger in ("vmsnapd.ramstore", "vmsnapd.hypervisor"):
                short = re.sub(r" dataset=\S+ domain=\S+ snapshot=\S+", "", msg)
                mine.append((at, short[:140]))
        out[who] = mine
    return out


MARKS = (("begin", "journal: begin"), ("xml_saved", "→ xml_saved"), ("freezing", "→ freezing"),
         ("libvirt", "snapshotCreateXML"), ("frozen", "→ frozen"), ("snapshotted", "→ snapshotted"),
         ("committed", "→ committed"), ("resumed", "→ resumed"), ("unfrozen", "→ unfrozen"), ("kept", "→ dump_kept"), ("done", "→ done"))
PHASES = (("prepare", "begin", "libvirt"), ("libvirt snapshot (RAM + overlay)", "libvirt", "frozen"),
          ("zfs snapshot", "frozen", "snapshotted"), ("blockcommit + pivot", "snapshotted", "committed"),
          ("resume (pause method)", "snapshotted", "resumed"),
          ("RAM file into the store", "unfrozen", "kept"), ("cycle", "begin", "done"))


def phases(tl: dict) -> dict[str, dict[str, int]]:
    """Per domain: how long each phase of its cycle took (ms), and when its cycle began and ended in the pass."""
    out = {}
    for thread, lines in tl["threads"].items():
        who = tl["domains"].get(thread)
        if not who:
            continue
        at = {}
        for ms, _level, _logger, msg in lines:
            for mark, text in MARKS:
                if text in msg and mark not in at:
                    at[mark] = ms
        row = {name: at[b] - at[a] for name, a, b in PHASES if a in at and b in at}
        row.update(start=at.get("begin"), end=at.get("done"))
        out[who] = row
    return out


def pass_phases(tl: dict, wall_ms: int) -> dict[str, int]:
    """The pass around the cycles: start-up until the first line, planning until the first cycle, the cycles,
    and what follows the last one until the process ended."""
    firsts = [lines[0][0] for lines in tl["threads"].values() if lines]
    begins = [ms for lines in tl["threads"].values() for ms, *_rest, msg in lines if "journal: begin" in msg]
    ends = [ms for lines in tl["threads"].values() for ms, *_rest, msg in lines if "journal: finished" in msg]
    if not firsts or not begins or not ends:
        return {}
    return {"start-up (interpreter, imports, config)": min(firsts), "survey + planning": min(begins) - min(firsts),
            "cycles (first begin to last finish)": max(ends) - min(begins), "after the cycles": wall_ms - max(ends)}


def run_watching_threads(argv: list[str], env: dict | None) -> tuple[subprocess.CompletedProcess, list[float]]:
    """Run `argv`; meanwhile read the CPU seconds of each of the vmsnapd process's threads every 50 ms (the last
    reading of each counts): which of its threads used the CPU — under py-spy, the vmsnapd process is py-spy's
    child and is found as the python process below it."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO),
                          env=env) as popen:
        seen: dict[int, float] = {}
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.append(popen.stderr.read()), daemon=True)
        reader.start()
        while popen.poll() is None:
            pid = popen.pid
            kids = Path(f"/proc/{pid}/task/{pid}/children")
            try:
                child = kids.read_text().split()
                if child and "py-spy" in argv[0]:
                    pid = int(child[0])
                for task in Path(f"/proc/{pid}/task").iterdir():
                    seen[int(task.name)] = cpu_of_task(pid, int(task.name))
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        stdout = popen.stdout.read()
        reader.join()
    return (subprocess.CompletedProcess(argv, popen.returncode, stdout, out[0] if out else ""),
            sorted((round(v, 2) for v in seen.values() if v > 0.005), reverse=True))


def cpu_of_task(pid: int, tid: int) -> float:
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def one_pass(root: Path, guests: list, max_parallel: int, staging: Path, out_dir: Path, tag: str,
             py_spy: str | None, code: Path | None = None, method: str | None = None,
             paused: bool = False) -> dict:
    clear(guests, root)
    if paused:  # QEMU refuses a second RAM capture of a guest paused since the last one ("postmigrate"): run it once
        for _, vm in guests:
            vm.dom.resume()
            vm.dom.suspend()
    config = write_config(root, guests, max_parallel, staging, method)
    mine = {vm.name: qemu_pid(vm.name) for _, vm in guests}
    others = [p for p in pids_named("qemu-system-x86") if p not in mine.values()]
    daemons = {n: pids_named(n) for n in ("zfs-fuse", "libvirtd", "virtlogd")}
    before = {"qemu": {n: cpu_of(p) for n, p in mine.items() if p},
              "others": sum(cpu_of(p) for p in others),
              "daemons": {n: sum(cpu_of(p) for p in ps) for n, ps in daemons.items()}}
    every0 = cpu_by_command()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, idle0 = host_cpu()
    argv = [PYTHON, "-m", "vmsnapd", "--debug", "-c", str(config), "once", "--take"]
    if py_spy:
        argv = [str(Path(PYTHON).parent / "py-spy"), "record", "--threads", "--rate", "200", "-f", "raw",
                *(["--idle"] if py_spy == "idle" else []), "-o", str(out_dir / f"{tag}.pyspy.txt"), "--"] + argv
    t0_wall = time.time()
    t0 = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(code)} if code else None  # another tree's vmsnapd, side by side
    proc, threads = run_watching_threads(argv, env)
    wall = time.monotonic() - t0
    busy1, idle1 = host_cpu()
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    every1 = cpu_by_command()
    after = {"qemu": {n: cpu_of(p) for n, p in mine.items() if p},
             "others": sum(cpu_of(p) for p in others),
             "daemons": {n: sum(cpu_of(p) for p in ps) for n, ps in daemons.items()}}
    (out_dir / f"{tag}.log").write_text(proc.stderr)
    (out_dir / f"{tag}.out").write_text(proc.stdout)
    if proc.returncode != 0:
        raise BenchError(f"{tag}: vmsnapd exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    tl = timeline(proc.stderr, t0_wall)
    cpu = {"vmsnapd+commands": (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime),
           "vmsnapd+commands system": children1.ru_stime - children0.ru_stime,
           "vmsnapd+commands minor faults (thousands)": (children1.ru_minflt - children0.ru_minflt) / 1000,
           "qemu (these guests)": sum(after["qemu"][n] - before["qemu"].get(n, 0) for n in after["qemu"]),
           "qemu (other guests on the host)": after["others"] - before["others"],
           **{n: after["daemons"][n] - before["daemons"][n] for n in daemons},
           "host busy (all cores)": busy1 - busy0, "host idle (all cores)": idle1 - idle0}
    pauses = sorted(json.loads(f.read_text()).get("pause_ms") or 0 for f in (root / "ram").glob("*/*.json"))
    cycles = {m.group(1): int(m.group(2)) for m in re.finditer(r"^ok\s+(\S+) .*\[(\d+) ms\]$", proc.stdout, re.M)}
    result = {"tag": tag, "guests": len(guests), "max_parallel": max_parallel, "wall_s": round(wall, 3),
              "load": os.getloadavg(), "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
              "cpu_by_command": top_commands(every0, every1),
              "vmsnapd_threads_cpu_s": threads, "vmsnapd_self_cpu_s": round(sum(threads), 2),
              "cpu_per_guest_qemu": {n: round(after["qemu"][n] - before["qemu"].get(n, 0), 2) for n in after["qemu"]},
              "cycle_ms": cycles, "pause_ms": pauses, "phases": phases(tl), "pass": pass_phases(tl, round(wall * 1000)),
              "steps": steps(tl)}
    (out_dir / f"{tag}.json").write_text(json.dumps(result, indent=1))
    return result


def show(r: dict) -> None:
    print(f"\n== {r['tag']}: {r['guests']} guest(s), max_parallel {r['max_parallel']}: wall {r['wall_s']:.2f} s, "
          f"load {r['load'][0]:.2f}")
    print("  CPU seconds during the pass: " + ", ".join(f"{k} {v}" for k, v in r["cpu_s"].items()))
    print("  CPU seconds by command (long-lived processes): "
          + ", ".join(f"{k} {v}" for k, v in r["cpu_by_command"].items()))
    print(f"  vmsnapd's own threads (CPU s, without the commands it ran): {r['vmsnapd_self_cpu_s']} = "
          f"{r['vmsnapd_threads_cpu_s']}")
    print(f"  cycles (ms): {sorted(r['cycle_ms'].values())}; pauses (ms): {r['pause_ms']}")
    print("  pass (ms): " + ", ".join(f"{k} {v}" for k, v in r["pass"].items()))
    names = [name for name, *_ in PHASES]
    print("  " + " | ".join(["guest", "start", "end"] + names))
    for who, row in sorted(r["phases"].items(), key=lambda kv: kv[1].get("start") or 0):
        print("  " + " | ".join([who[-10:], str(row.get("start")), str(row.get("end"))]
                                + [str(row.get(n, "")) for n in names]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-parallel", type=int, default=None)
    ap.add_argument("--py-spy", nargs="?", const="cpu", choices=("cpu", "idle"), default=None,
                    help="py-spy record of vmsnapd: samples on CPU (default), or `idle`: waiting threads too")
    ap.add_argument("--method", choices=("overlay", "pause"), default=None, help="capture method (default: "
                    "vmsnapd's default)")
    ap.add_argument("--paused", action="store_true",
                    help="pause the guests after boot: the cycles (of paused VMs) without the guests' own CPU")
    ap.add_argument("--only-many", action="store_true", help="skip the single-guest passes")
    ap.add_argument("--compare", type=Path, default=None,
                    help="a source tree holding another vmsnapd package (e.g. `git archive` of main): each round "
                         "also runs the passes with it, in alternating order")
    args = ap.parse_args()
    pool = root = None
    out_dir = REPO / "bench" / "results" / time.strftime("pass_profile-%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True)
    results = []
    results_extra: dict = {}
    try:
        lab.check_lab()
        root = lab.make_run_dir("passprof")
        staging = Path("/dev/shm") / root.name
        staging.mkdir(mode=0o700)
        pool = lab.create_pool("2G")
        guests, why = start_guests(pool, args.n)
        if why:
            print(f"  going on with {len(guests)} guest(s): {why}")
        jobs = args.max_parallel or len(guests)
        time.sleep(5)  # let the last guest's boot settle
        out = idle_baseline(guests)
        print(f"  no pass, 5 s: the {len(guests)} guests' QEMU {out['qemu_s']} CPU-s, host busy {out['busy_s']}, "
              f"idle {out['idle_s']} CPU-s (of {out['cores'] * 5} on {out['cores']} cores)", flush=True)
        results_extra = {"idle_baseline": out}
        if args.paused:  # the guests' own CPU out of the way: what is left is the cycles' work
            for _, vm in guests:
                vm.dom.suspend()
            out = idle_baseline(guests)
            print(f"  guests paused, 5 s: their QEMU {out['qemu_s']} CPU-s, host idle {out['idle_s']} CPU-s", flush=True)
            results_extra["paused_baseline"] = out
        codes = [("", None)] + ([("old-", args.compare)] if args.compare else [])
        for i in range(args.rounds):
            for label, code in (codes if i % 2 == 0 else codes[::-1]):
                for tag, subset in (("single", guests[:1]), ("many", guests)):
                    if tag == "single" and args.only_many:
                        continue
                    r = one_pass(root, subset, jobs, staging, out_dir, f"r{i + 1}-{label}{tag}", args.py_spy, code,
                                 args.method, args.paused)
                    r["code"] = str(code or "this tree")
                    show(r)
                    results.append(r)
                    time.sleep(3)
    except (BenchError, lab.LabError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        tear_down(pool, root)
    for code in dict.fromkeys(r["code"] for r in results):
        singles = [r["wall_s"] for r in results if r["guests"] == 1 and r["code"] == code]
        many = [r["wall_s"] for r in results if r["guests"] > 1 and r["code"] == code]
        print(f"\n{code}: single {singles} s; many {many} s; ratio of medians "
              f"{median(many) / median(singles) if singles and many else float('nan'):.2f}")
    (out_dir / "summary.json").write_text(json.dumps({**results_extra, "passes": [
        {k: v for k, v in r.items() if k != "steps"} for r in results]}, indent=1))
    print(f"results in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
