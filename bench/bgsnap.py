#!/usr/bin/env python3
"""Prototype: the pause method with QEMU's `background-snapshot` migration capability. The guest stops only
for the zfs snapshot; its RAM is written afterwards while it runs (userfaultfd write protection keeps the
stopped instant's pages). Measured side by side with vmsnapd's pause/live path done by hand, on one busy guest,
and every cycle restored once to check consistency (continues at exactly snapshot max + 1, nothing rewritten).

libvirt 9.0 has no API for it, so this goes around libvirt (QMP passthrough, which taints the domain):
`migrate-set-capabilities background-snapshot`, the memory file's descriptor handed over with `getfd`
(virDomainQemuMonitorCommandWithFiles), `migrate fd:`. libvirt restores only its own save-image format: the file
gets the header of a libvirt-made memory file of the same domain (everything before QEMU's "QEVM" stream magic)
followed by QEMU's stream. Cycle: getfd → suspend → zfs snapshot → migrate (QEMU saves the device state,
arms write protection and resumes the guest itself) → wait until the migration completed.

QEMU 7.2 needs userfaultfd from its unprivileged process: `vm.unprivileged_userfaultfd = 1` (QEMU >= 8.1 can use
/dev/userfaultfd instead). Without it this prints QEMU's refusal and exits 0. Never asserts timings; exit 1 when a
cycle failed or a restore was inconsistent.

    sudo .venv/bin/python bench/bgsnap.py [-n 5] [--memory 1024] [--dirty-mib 64] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import libvirt
import libvirt_qemu

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchError, lab, median, tear_down  # noqa: E402
from _window import Watcher, background_snapshot_probe, pause_method_steps, qmp  # noqa: E402

QEMU_MAGIC = b"QEVM"


def libvirt_header(vm, dataset: str, events, work: Path) -> bytes:
    """The save-image header libvirt writes before QEMU's stream, taken from one libvirt-made memory file."""
    mem = work / "header-source.mem"
    pause_method_steps(vm, dataset, events, mem, 9999, live=True, keep_file=True)
    data = mem.read_bytes()
    mem.unlink()
    at = data.find(QEMU_MAGIC)
    if at <= 0:
        raise BenchError("no QEMU stream magic in libvirt's memory file")
    return data[:at]


def check(reply: dict, what: str) -> dict:
    if "error" in reply:
        raise BenchError(f"{what}: {reply['error']}")
    return reply


def background_cycle(vm, dataset: str, events, header: bytes, path: Path, i: int) -> dict:
    dom = vm.dom
    check(qmp(dom, {"execute": "migrate-set-capabilities", "arguments": {"capabilities": [
        {"capability": "background-snapshot", "state": True}]}}), "background-snapshot on")
    check(qmp(dom, {"execute": "migrate-set-parameters", "arguments": {"max-bandwidth": 10 * 2**30}}),
          "max-bandwidth")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, header)
        reply = libvirt_qemu.qemuMonitorCommandWithFiles(
            dom, json.dumps({"execute": "getfd", "arguments": {"fdname": "vmsnapd-bg"}}), [fd], 0)
        check(json.loads(reply[0] if isinstance(reply, (tuple, list)) else reply), "getfd")
    finally:
        os.close(fd)  # QEMU holds its own copy now
    mark = events.mark()
    t0 = time.monotonic()
    dom.suspend()
    t_s = time.monotonic()
    lab.zfs("snapshot", f"{dataset}@bg{i}")
    t_z = time.monotonic()
    check(qmp(dom, {"execute": "migrate", "arguments": {"uri": "fd:vmsnapd-bg"}}), "migrate")
    t_m = time.monotonic()
    pauses = events.wait_resumed(mark)
    if len(pauses) != 1:
        raise BenchError(f"expected one pause, saw {pauses}")
    (s, r), = pauses
    while True:
        status = check(qmp(dom, {"execute": "query-migrate"}), "query-migrate")["return"]
        if status.get("status") in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.05)
    t_done = time.monotonic()
    check(qmp(dom, {"execute": "migrate-set-capabilities", "arguments": {"capabilities": [
        {"capability": "background-snapshot", "state": False}]}}), "background-snapshot off")
    if status["status"] != "completed":
        raise BenchError(f"background snapshot {status['status']}: {status}")
    ms = lambda a, b: (b - a) * 1000  # noqa: E731
    return {"pause_ms": ms(s, r), "suspend_call": ms(t0, t_s), "zfs_snapshot": ms(t_s, t_z),
            "migrate_call": ms(t_z, t_m), "migrate_to_resumed": ms(t_m, r), "ram_written_after_s": t_done - r,
            "qemu_downtime": status.get("downtime"), "size": path.stat().st_size}


def restore_check(vm, dataset: str, snap: str, path: Path, k: int) -> dict:
    """Stop the guest, roll the dataset back to `snap`, restore the RAM file, check the counter continues."""
    at_snapshot = lab.snapshot_max_counter(f"{dataset}@{snap}", vm.disk.relpath)
    lab.wait_counter_advances(vm, by=10, start=at_snapshot, timeout=60)
    token = f"bg{k}"
    lab.write_token(vm, token)
    vm.dom.destroy()
    lab.zfs("rollback", "-r", f"{dataset}@{snap}")
    lab.conn().restoreFlags(str(path), None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
    lab.wait_counter_advances(vm, by=10, start=at_snapshot, timeout=60)
    rewritten, first_new = lab.resume_evidence(vm, at_snapshot, token)
    return {"at_snapshot": at_snapshot, "first_new": first_new, "rewritten": rewritten[:20],
            "ok": not rewritten and first_new == at_snapshot + 1}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=5, help="cycles (each restored once; default 5)")
    ap.add_argument("--memory", type=int, default=1024, help="guest RAM in MiB (default 1024)")
    ap.add_argument("--dirty-mib", type=int, default=64, help="RAM the guest dirties continuously (default 64)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    pool = root = watcher = None
    out: dict = {"bg": [], "hand": []}
    failed = False
    try:
        lab.check_lab()
        root = lab.make_run_dir("bgsnap")
        pool = lab.create_pool("1G")
        watcher = Watcher()
        ds = lab.create_dataset(pool, name="guest")
        vm = lab.create_vm(ds, memory_mib=args.memory, dirty_mib=min(args.dirty_mib, args.memory // 8))
        lab.wait_counter_advances(vm, by=20, timeout=90)
        events = watcher.watch(vm.name)
        out["probe"] = background_snapshot_probe(vm.dom)
        print(f"{args.memory} MiB guest {vm.name}; background-snapshot: {out['probe']}", flush=True)
        if out["probe"] != "available":
            print("not available here: nothing measured (see the docstring for what it needs)")
            return 0
        header = libvirt_header(vm, ds.name, events, vm.workdir)
        for i in range(args.n):
            out["hand"].append(pause_method_steps(vm, ds.name, events, vm.workdir / f"hand{i}.mem", i, live=True))
            lab.wait_counter_advances(vm, by=3, timeout=60)
            path = vm.workdir / f"bg{i}.mem"
            r = background_cycle(vm, ds.name, events, header, path, i)
            r.update(restore_check(vm, ds.name, f"bg{i}", path, i))
            path.unlink()
            out["bg"].append(r)
            failed |= not r["ok"]
            print(f"  cycle {i + 1}: pause/live by hand {out['hand'][-1]['pause_ms']:.0f} ms, background "
                  f"{r['pause_ms']:.0f} ms (zfs {r['zfs_snapshot']:.0f}, migrate call {r['migrate_call']:.0f}, "
                  f"to resumed {r['migrate_to_resumed']:.0f}; RAM written in {r['ram_written_after_s']:.1f} s after); "
                  f"restore: max {r['at_snapshot']} first new {r['first_new']} rewritten {len(r['rewritten'])} "
                  f"{'ok' if r['ok'] else 'INCONSISTENT'}", flush=True)
    except (BenchError, lab.LabError, libvirt.libvirtError, ValueError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        tear_down(pool, root, watcher)
    bg, hand = [r["pause_ms"] for r in out["bg"]], [r["pause_ms"] for r in out["hand"]]
    print(f"\npause median/max: pause/live by hand {median(hand):.0f}/{max(hand):.0f} ms, background-snapshot "
          f"{median(bg):.0f}/{max(bg):.0f} ms ({median(bg) / median(hand):.2f}x); restores consistent "
          f"{sum(r['ok'] for r in out['bg'])}/{len(out['bg'])}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
