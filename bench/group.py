#!/usr/bin/env python3
"""VM groups (issue 13, goal 3, the groups half): the pause of a single counter guest against the pause of each
member of a 2-guest group, measured side by side in one run (goal: a member's pause <= 1.5x the single guest's).

Three 128 MiB TCG counter guests, each with its disk on a dataset of its own, all with the pause method (live RAM
copy, memory on, quiesce off: the counter guest has no agent): guest S alone, guests A and B in one group
(docs/groups.md). Rounds alternate `vmsnapd snapshot S` and `vmsnapd snapshot A` (the whole group's cycle), so
load drift hits both alike. Pauses are what vmsnapd measured (libvirt SUSPENDED->RESUMED, `pause_ms` in each RAM
manifest); a member's pause includes its wait at the group's barrier for the other member's hold. Prints a table,
writes bench/results/group-<time>.json. Never asserts timings; exit 0 when every cycle worked.

    sudo .venv/bin/python bench/group.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchError, check_ok, lab, median, tear_down, vmsnapd  # noqa: E402
from _scale import goal_rows, table, write_results  # noqa: E402

GUEST_MIB = 128
POLICY = {"hourly": 100, "daily": 0, "monthly": 0, "method": "pause", "live": True, "memory": True,
          "quiesce": "off"}


def pauses_since(ram_dir: Path, seen: set[str]) -> dict[str, int]:
    """Guest name -> pause_ms of the RAM manifests written since `seen` (their paths)."""
    out = {}
    for f in sorted(ram_dir.glob("*/*.json")) if ram_dir.is_dir() else []:
        if str(f) in seen:
            continue
        seen.add(str(f))
        data = json.loads(f.read_text())
        if data.get("pause_ms") is None:
            raise BenchError(f"{f}: no pause_ms")
        out[data["domain"]] = int(data["pause_ms"])
    return out


WAITED = re.compile(r"; (\S+) waited (\d+) ms held still for the others and the step")


def one_round(config: Path, name: str, ram_dir: Path, seen: set[str],
              expect: int) -> tuple[dict[str, int], dict[str, int], float]:
    """One `vmsnapd -v snapshot`: (pause per guest, a group member's wait at the barrier, wall time)."""
    t0 = time.monotonic()
    proc = vmsnapd(config, "-v", "snapshot", name, "--period", "hourly", timeout=900)
    wall = time.monotonic() - t0
    check_ok(proc, f"vmsnapd snapshot {name}")
    got = pauses_since(ram_dir, seen)
    if len(got) != expect:
        raise BenchError(f"snapshot {name}: expected {expect} new RAM dump(s), found {got}")
    time.sleep(1.1)  # the next cycle's stamp (one per second)
    return got, {m: int(ms) for m, ms in WAITED.findall(proc.stderr)}, wall


def measure(root: Path, guests: dict, rounds: int) -> dict:
    (s_ds, s_vm), (a_ds, a_vm), (b_ds, b_vm) = guests["S"], guests["A"], guests["B"]
    datasets = {s_ds.name: {**POLICY, "domain": s_vm.name},
                a_ds.name: {**POLICY, "domain": a_vm.name, "group": "bench"},
                b_ds.name: {**POLICY, "domain": b_vm.name, "group": "bench"}}
    config = lab.write_vmsnapd_config(root, datasets)
    seen: set[str] = set()
    single, walls = [], {"single": [], "group": []}
    members: dict[str, list[int]] = {a_vm.name: [], b_vm.name: []}
    waits: dict[str, list[int]] = {a_vm.name: [], b_vm.name: []}
    for i in range(rounds):
        got, _, wall = one_round(config, s_vm.name, root / "ram", seen, 1)
        single.append(got[s_vm.name])
        walls["single"].append(wall)
        got, waited, wall = one_round(config, a_vm.name, root / "ram", seen, 2)
        for name, ms in got.items():
            members[name].append(ms)
            waits[name].append(waited.get(name, -1))
        walls["group"].append(wall)
        print(f"  round {i + 1}: single {single[-1]} ms; group {got} ms, of which waiting at the barrier "
              f"{waited} ms; load {os.getloadavg()[0]:.1f}", flush=True)
    return {"single": single, "members": members, "barrier_wait": waits, "walls": walls}


def start_guests(pool) -> dict:
    guests = {}
    for key in ("S", "A", "B"):
        ds = lab.create_dataset(pool, name=f"grp{key.lower()}")
        guests[key] = (ds, lab.create_vm(ds, memory_mib=GUEST_MIB))
        print(f"  guest {key}: {guests[key][1].name} on {ds.name}", flush=True)
    return guests


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="snapshots of each (default 5)")
    args = ap.parse_args()
    pool = root = None
    guests: dict = {}
    try:
        lab.check_lab()
        root = lab.make_run_dir("group")
        pool = lab.create_pool("2G")
        print(f"starting 3 counter guests of {GUEST_MIB} MiB (TCG)", flush=True)
        guests = start_guests(pool)
        result = measure(root, guests, args.rounds)
    except (BenchError, lab.LabError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        tear_down(pool, root)

    s_med = median(result["single"])
    rows = [("pause median (ms)", f"{s_med:.0f}", "", "", "", "")]
    worst_ratio = 0.0
    for name, values in result["members"].items():
        ratio = median(values) / max(s_med, 1)
        worst_ratio = max(worst_ratio, ratio)
        rows.append((f"  member {name}", "", f"{median(values):.0f}", f"{ratio:.2f}x", "<= 1.5x",
                     "met" if ratio <= 1.5 else "NOT met"))
    for name, values in result["barrier_wait"].items():
        rows.append((f"  of which {name} waited at the barrier", "", f"{median(values):.0f}", "", "", ""))
    rows.append(("pause max (ms)", max(result["single"]),
                 max(v for values in result["members"].values() for v in values), "", "", ""))
    rows.append(("snapshot command wall (s, median)", f"{median(result['walls']['single']):.1f}",
                 f"{median(result['walls']['group']):.1f}", "", "", ""))
    print()
    print(f"a single {GUEST_MIB} MiB TCG counter guest vs each member of a 2-guest group; method pause, live; "
          f"{args.rounds} rounds alternating; one run on a shared 2-core machine (noisy)")
    print(table(rows, ("", "single", "group member", "ratio", "goal", "")))
    ratios = goal_rows(rows, lambda r: f"{r[3]} (member {r[2]} ms, single guest {s_med:.0f} ms, median)", 4)
    print(f"results: {write_results('group', {**result, 'worst_member_ratio': worst_ratio}, ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
