#!/usr/bin/env python3
"""Where the default method's paused window goes, and pre-created overlays against libvirt-made ones.

vmsnapd's default cycle (overlay / live, RAM file staged on a tmpfs) done by hand, every step stamped, two ways
side by side on the same busy guest, interleaved (the order alternates every round):
- **created**: libvirt makes the qcow2 overlay itself (what vmsnapd does today): with QEMU's blockdev, libvirt
  creates it through a `blockdev-create` job while the guest is stopped after the live RAM pass;
- **reused**: the overlay is made first with `qemu-img create -f qcow2 -b BASE -F FMT` (0600, root's; timed
  apart, before the guest is touched) and libvirt is asked to use it (VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT):
  only `blockdev-add` of the existing file inside the window.
With `--downtime-ms N` a third way: reused, with QEMU's migration downtime limit lowered to N ms for the capture and
put back after (measured at 20 ms, not adopted: consistency, docs/benchmarks.md); with `--product` another:
`vmsnapd snapshot` itself (pre-created overlays since session 18).
Then `zfs snapshot` and `blockcommit --active --pivot`, as the product does. Several guests are booted fresh
(`--guests`), so several cycles are the *first capture after boot*; the first cycle alternates between the two
ways from one guest to the next.

Per cycle: pause (SUSPENDED→RESUMED seen by this benchmark's own libvirt listener), libvirt's completed-job
statistics (QEMU's downtime), the overlay file's owner and mode while the guest runs on it, and with `--qmp-log`
the QMP traffic of libvirtd (its runtime log settings are set with virt-admin for the run and put back after):
every command QEMU was sent between its STOP and RESUME events and how long each took.

    sudo .venv/bin/python bench/overlay_window.py [--guests 3] [-n 4] [--memory 1024] [--dirty-mib 64]
                                                  [--base-format raw] [--qmp-log] [--json out.json]

Never asserts timings. Exit 0 when every cycle succeeded, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import stat
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import libvirt  # noqa: E402

from _common import BenchError, check_ok, lab, median, tear_down, vmsnapd  # noqa: E402
from _window import Events, Watcher, pause_ms, virsh  # noqa: E402

WAYS = ["created", "reused"]  # + "reused, downtime N ms" with --downtime-ms
LOG_FILTERS = "1:qemu.qemu_monitor 1:qemu.qemu_snapshot 1:qemu.qemu_migration 1:qemu.qemu_block 4:*"
# "2026-11-30 12:34:56.789+0000: 21370: info : qemuMonitorIOWrite:435 : QEMU_MONITOR_IO_WRITE: mon=0x7f.. buf=..."
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})[+]0000: \d+: \w+ : (\w+):\d+ : (.*)$")
MON = re.compile(r"mon=(0x[0-9a-f]+)")


# -- libvirtd's runtime log settings (virt-admin) ---------------------------------------------------------------

def _virt_admin(*args: str) -> str:
    proc = subprocess.run(["virt-admin", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise BenchError(f"virt-admin {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def _current(kind: str) -> str:
    out = _virt_admin(f"daemon-log-{kind}")
    return out.split(":", 1)[1].strip() if ":" in out else ""


class QmpLog:
    """libvirtd's QMP traffic to a file of this run, the previous filters/outputs put back by `close`."""

    def __init__(self, path: Path):
        self.path = path
        self.filters = _current("filters")
        self.outputs = _current("outputs")
        print(f"libvirtd log settings before: filters {self.filters!r}, outputs {self.outputs!r}", flush=True)
        _virt_admin("daemon-log-filters", LOG_FILTERS)
        _virt_admin("daemon-log-outputs", f"1:file:{path}")

    def close(self) -> None:
        _virt_admin("daemon-log-outputs", self.outputs)
        _virt_admin("daemon-log-filters", self.filters)
        print(f"libvirtd log settings restored: filters {_current('filters')!r}, outputs {_current('outputs')!r}",
              flush=True)


def _stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()


def _log_lines(log_path: Path, overlay: str, since: float, until: float) -> list[tuple[float, str]]:
    """(time, text) of libvirtd's log lines in [since, until] about the QEMU monitor that opened `overlay`."""
    lines = []
    with open(log_path, errors="replace") as f:
        for line in f:
            m = LOG_LINE.match(line)
            if m and since - 0.05 <= _stamp(m[1]) <= until + 0.05:
                lines.append((_stamp(m[1]), m[3]))
    mon = next((MON.search(text)[1] for _t, text in lines if overlay in text and MON.search(text)), None)
    return [(t, text) for t, text in lines if mon is not None and f"mon={mon}" in text]


def _qemu_events(lines: list[tuple[float, str]]) -> dict[str, float]:
    """QEMU's own timestamps of its STOP and RESUME events and of the migration's completion (MIGRATED)."""
    events: dict[str, float] = {}
    for _t, text in lines:
        if "QEMU_MONITOR_RECV_EVENT" not in text:
            continue
        ev = json.loads(text.split("event=", 1)[1])
        name = ev.get("event")
        if name == "MIGRATION" and ev.get("data", {}).get("status") == "completed":
            name = "MIGRATED"
        if name in ("STOP", "RESUME", "MIGRATED"):
            events.setdefault(name, ev["timestamp"]["seconds"] + ev["timestamp"]["microseconds"] / 1e6)
    return events


def _commands(lines: list[tuple[float, str]]) -> list[dict]:
    """Every QMP command libvirt sent (when, and the time to its reply) and every event it received."""
    commands, pending = [], {}
    for t, text in lines:
        if "QEMU_MONITOR_SEND_MSG" in text:
            cm = re.search(r'"execute": ?"([\w-]+)".*?"id": ?"(libvirt-\d+)"', text)
            if cm:
                pending[cm[2]] = (t, cm[1])
        elif "QEMU_MONITOR_RECV_REPLY" in text:
            rm = re.search(r'"id": ?"(libvirt-\d+)"', text)
            if rm and rm[1] in pending:
                sent, name = pending.pop(rm[1])
                commands.append({"cmd": name, "sent": sent, "ms": (t - sent) * 1000})
        elif "QEMU_MONITOR_RECV_EVENT" in text:
            em = re.search(r'"event": ?"([\w-]+)"', text)
            if em:
                commands.append({"cmd": f"event {em[1]}", "sent": t, "ms": 0.0})
    return commands


def qmp_window(log_path: Path, overlay: str, since: float, until: float) -> dict | None:
    """The QMP exchange of the cycle that used `overlay`: commands sent between QEMU's STOP and RESUME events
    (QEMU's own event timestamps) with the time to each reply, from libvirtd's log lines in [since, until]."""
    lines = _log_lines(log_path, overlay, since, until)
    if not lines:
        return None
    events = _qemu_events(lines)
    commands = _commands(lines)
    stop, resume, migrated = events.get("STOP"), events.get("RESUME"), events.get("MIGRATED")
    if stop is None or resume is None:
        return {"qemu_pause_ms": None, "parts": None, "window": []}
    inside = [c for c in commands if stop <= c["sent"] <= resume]
    disk = [c for c in inside if c["cmd"] in ("blockdev-add", "transaction")]
    parts = None
    if migrated and disk:
        switched = disk[-1]["sent"] + disk[-1]["ms"] / 1000
        parts = {"ram_and_devices": (migrated - stop) * 1000,  # QEMU: last RAM pass + device state
                 "libvirt_after_migration": (disk[0]["sent"] - migrated) * 1000,  # job end, file closed, labels
                 "disk_switch": (switched - disk[0]["sent"]) * 1000,  # overlay made (or opened) and switched to
                 "until_resume": (resume - switched) * 1000}  # status XML, `cont`
    return {"qemu_pause_ms": (resume - stop) * 1000, "parts": parts,
            "window": [{"cmd": c["cmd"], "at_ms": round((c["sent"] - stop) * 1000, 1), "ms": round(c["ms"], 1)}
                       for c in inside]}


# -- one cycle by hand ----------------------------------------------------------------------------------------

def precreate(overlay: Path, base: str, fmt: str) -> float:
    """The overlay made before the guest is touched: qcow2 on `base` (recorded in its header), 0600, root's."""
    t = time.monotonic()
    fd = os.open(overlay, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    lab.run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", fmt, overlay)
    return (time.monotonic() - t) * 1000


def external_cycle(vm, dataset: str, events: Events, overlay_dir: Path, staging: Path, tag: str, *,
                   reuse: bool, downtime_ms: int | None = None) -> dict:
    disk = vm.disks[0]
    overlay = overlay_dir / f"{tag}.qcow2"
    memory = staging / f"{tag}.mem"
    create_ms = precreate(overlay, str(disk.path), disk.fmt) if reuse else None
    xml = (f"<domainsnapshot><name>{tag}</name><memory snapshot='external' file='{memory}'/><disks>"
           f"<disk name='{disk.target}' snapshot='external' type='file'><driver type='qcow2'/>"
           f"<source file='{overlay}'/></disk><disk name='{vm.token_target}' snapshot='no'/></disks>"
           f"</domainsnapshot>")
    flags = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
             | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE | (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT if reuse else 0))
    dom = vm.dom
    if downtime_ms is not None:
        default_downtime = dom.migrateGetMaxDowntime(0)
        dom.migrateSetMaxDowntime(downtime_ms, 0)
    mark = events.mark()
    wall_call = time.time()
    t_call = time.monotonic()
    dom.snapshotCreateXML(xml, flags)
    t_ret = time.monotonic()
    if downtime_ms is not None:
        dom.migrateSetMaxDowntime(default_downtime, 0)
    st = overlay.stat()
    lab.zfs("snapshot", f"{dataset}@{tag}")
    t_zfs = time.monotonic()
    virsh("blockcommit", vm.name, disk.target, "--active", "--pivot", "--wait")
    t_commit = time.monotonic()
    pauses = events.wait_resumed(mark)
    if len(pauses) != 1:
        raise BenchError(f"{tag}: expected one pause, saw {pauses}")
    (s, r), = pauses
    try:
        stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except libvirt.libvirtError:
        stats = {}
    after = overlay.stat()
    overlay.unlink(missing_ok=True)
    memory.unlink(missing_ok=True)
    ms = lambda a, b: (b - a) * 1000  # noqa: E731
    way = ("reused" if reuse else "created") + (f", downtime {downtime_ms} ms" if downtime_ms is not None else "")
    return {"way": way, "tag": tag, "overlay": str(overlay), "pause_ms": pause_ms(pauses),
            "precreate_ms": create_ms, "live_before_stop_ms": ms(t_call, s), "stop_to_return_ms": ms(s, t_ret),
            "resumed_to_return_ms": ms(r, t_ret), "zfs_ms": ms(t_ret, t_zfs), "commit_ms": ms(t_zfs, t_commit),
            "downtime_ms": stats.get("downtime"), "setup_ms": stats.get("setup_time"),
            "passes": stats.get("memory_iteration"),
            "job_ms": stats.get("time_elapsed"), "wall_call": wall_call, "wall_end": time.time(),
            "owner_while_used": f"{st.st_uid}:{st.st_gid} {stat.filemode(st.st_mode)}",
            "owner_after_commit": f"{after.st_uid}:{after.st_gid} {stat.filemode(after.st_mode)}"}


def product_cycle(vm, dataset: str, events: Events, root: Path, staging: Path) -> dict:
    """`vmsnapd snapshot` itself (its default method, overlay / live, RAM staged in `staging`), timed alike."""
    config = lab.write_vmsnapd_config(root, {dataset: {"domain": vm.name, "quiesce": "off", "hourly": 100}},
                                      daemon={"ram_compression": "none", "ram_staging_dir": str(staging / "vmsnapd")})
    mark = events.mark()
    wall_call = time.time()
    check_ok(vmsnapd(config, "snapshot", dataset), f"vmsnapd snapshot {dataset}")
    wall_end = time.time()
    pauses = events.wait_resumed(mark)
    try:
        stats = vm.dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except libvirt.libvirtError:
        stats = {}
    for f in (root / "ram").rglob("*"):
        if f.is_file():
            f.unlink()
    return {"way": "vmsnapd", "overlay": str(root / "overlay") + "/", "pause_ms": pause_ms(pauses),
            "precreate_ms": None, "downtime_ms": stats.get("downtime"), "passes": stats.get("memory_iteration"),
            "live_before_stop_ms": None, "job_ms": stats.get("time_elapsed"), "wall_call": wall_call,
            "wall_end": wall_end, "owner_while_used": "-", "owner_after_commit": "-"}


def one_guest(pool, g: int, args, events_of, staging: Path, qmp_log: Path | None) -> list[dict]:
    ds = lab.create_dataset(pool, name=f"g{g}")
    vm = lab.create_vm(ds, memory_mib=args.memory, dirty_mib=args.dirty_mib, fmt=args.base_format)
    rows = []
    try:
        lab.wait_counter_advances(vm, by=20, timeout=120)  # booted, dirtier started, settled
        overlay_dir = vm.workdir / "overlays"
        overlay_dir.mkdir(mode=0o711, exist_ok=True)
        events = events_of(vm.name)
        first = WAYS[g % len(WAYS)]
        print(f"guest {g} {vm.name} ({args.memory} MiB, dirtying {args.dirty_mib} MiB, {args.base_format} base): "
              f"first capture {first}", flush=True)
        for i in range(args.n):
            shift = (g + i) % len(WAYS)  # each way is first in its round as often as the others
            order = WAYS[shift:] + WAYS[:shift]
            for k, way in enumerate(order):
                if way == "vmsnapd":
                    r = product_cycle(vm, ds.name, events, args.root, staging)
                    lab.next_second()  # the next cycle's snapshot name differs
                else:
                    r = external_cycle(vm, ds.name, events, overlay_dir, staging, f"g{g}c{i}w{WAYS.index(way)}",
                                       reuse=way != "created",
                                       downtime_ms=args.downtime_ms if "downtime" in way else None)
                r.update(guest=g, round=i, first_after_boot=(i == 0 and k == 0))
                rows.append(r)
                lab.wait_counter_advances(vm, by=3, timeout=60)  # resumed and writing again
            print("  round %d: %s" % (i + 1, ", ".join(f"{r['way']} {r['pause_ms']:.0f} ms (downtime "
                                                       f"{r['downtime_ms']})" for r in rows[-len(WAYS):])), flush=True)
    finally:
        lab.destroy_vm(vm)
    if qmp_log is not None:
        for r in rows:
            r["qmp"] = qmp_window(qmp_log, r["overlay"], r["wall_call"], r["wall_end"])
    return rows


def summary(rows: list[dict]) -> None:
    print("\nway                          cycles  pause median  max    first after boot   later median/max   downtime median"
          "   pause - downtime (libvirt's part) median / max")
    for way in WAYS:
        rr = [r for r in rows if r["way"] == way]
        first = [r["pause_ms"] for r in rr if r["first_after_boot"]]
        later = [r["pause_ms"] for r in rr if not r["first_after_boot"]]
        dt = [r["downtime_ms"] for r in rr if r["downtime_ms"] is not None]
        rest = [r["pause_ms"] - r["downtime_ms"] for r in rr if r["downtime_ms"] is not None]
        print(f"{way:28s} {len(rr):6d} {median([r['pause_ms'] for r in rr]):9.0f} ms {max(r['pause_ms'] for r in rr):5.0f}"
              f"   {', '.join(f'{p:.0f}' for p in first) or '-':>16s}   "
              f"{median(later):6.0f} / {max(later, default=float('nan')):4.0f} ms   {median(dt):6.0f} ms"
              f"   {median(rest):6.1f} / {max(rest, default=float('nan')):5.1f} ms")
    for way in WAYS:
        passes = sorted(r.get("passes") for r in rows if r["way"] == way and r.get("passes") is not None)
        if passes:
            print(f"RAM passes per capture ({way}): median {median(passes):.0f}, {passes[0]}-{passes[-1]}")
    pre = [r["precreate_ms"] for r in rows if r["precreate_ms"] is not None]
    print(f"qemu-img create before the guest is touched: median {median(pre):.0f} ms (outside the window)")
    print("overlay owner while used / after commit: "
          + "; ".join(sorted({f"{r['way']}: {r['owner_while_used']} / {r['owner_after_commit']}" for r in rows})))
    logged = [r for r in rows if (r.get("qmp") or {}).get("parts")]
    if logged:
        print("\nthe window from libvirtd's QMP log (median ms; QEMU's STOP/MIGRATION/RESUME event stamps):")
        print("way                          which        n  RAM+devices  libvirt after migration  disk switch  until resume")
        for way in WAYS:
            for label, first in (("first", True), ("later", False)):
                rr = [r["qmp"]["parts"] for r in logged if r["way"] == way and r["first_after_boot"] == first]
                if rr:
                    print(f"{way:28s} {label:10s} {len(rr):3d}  " + "  ".join(
                        f"{median([p[k] for p in rr]):{w}.1f}" for k, w in (
                            ("ram_and_devices", 11), ("libvirt_after_migration", 23), ("disk_switch", 11),
                            ("until_resume", 12))))
    for r in rows:
        q = r.get("qmp")
        if not q or q.get("qemu_pause_ms") is None:
            continue
        steps = ", ".join(f"{c['cmd']}@{c['at_ms']:.0f}+{c['ms']:.0f}" for c in q["window"])
        print(f"  g{r['guest']} r{r['round']} {r['way']:7s}{' FIRST' if r['first_after_boot'] else '      '} "
              f"pause {r['pause_ms']:.0f} (QEMU STOP→RESUME {q['qemu_pause_ms']:.0f}, downtime {r['downtime_ms']}): "
              f"{steps}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--guests", type=int, default=3, help="guests booted fresh one after another (default 3)")
    ap.add_argument("-n", type=int, default=4, help="rounds per guest, one cycle of each way per round (default 4)")
    ap.add_argument("--memory", type=int, default=1024, help="guest memory, MiB (default 1024)")
    ap.add_argument("--dirty-mib", type=int, default=64, help="RAM the guest dirties continuously (default 64)")
    ap.add_argument("--base-format", choices=("raw", "qcow2"), default="raw", help="the guest's disk format")
    ap.add_argument("--qmp-log", action="store_true", help="log libvirtd's QMP traffic (virt-admin) for the run")
    ap.add_argument("--downtime-ms", type=int, help="also: reused with QEMU's migration downtime limit set to this "
                    "(virDomainMigrateSetMaxDowntime; put back after each cycle)")
    ap.add_argument("--product", action="store_true", help="also: `vmsnapd snapshot` itself (its default method)")
    ap.add_argument("--json", type=Path, help="write every cycle here")
    args = ap.parse_args()
    if args.product:
        WAYS.append("vmsnapd")
    if args.downtime_ms is not None:
        WAYS.append(f"reused, downtime {args.downtime_ms} ms")
    pool = root = watcher = qlog = None
    rows: list[dict] = []
    status = 0
    try:
        lab.check_lab()
        root = args.root = lab.make_run_dir("ovwin")
        staging = Path("/dev/shm") / root.name  # the RAM file staged on tmpfs, as the default does
        staging.mkdir(mode=0o700)
        pool = lab.create_pool("2G")
        watcher = Watcher()
        log_path = root / "libvirtd-qmp.log" if args.qmp_log else None
        if log_path is not None:
            qlog = QmpLog(log_path)
        for g in range(args.guests):
            rows += one_guest(pool, g, args, watcher.watch, staging, log_path)
    except (BenchError, lab.LabError, libvirt.libvirtError, ValueError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        status = 1
    finally:
        if qlog is not None:
            qlog.close()
        if args.json and rows:
            args.json.write_text(json.dumps(rows, indent=1))
        if args.json and qlog is not None and log_path.exists():
            (args.json.parent / (args.json.stem + "-libvirtd.log")).write_bytes(log_path.read_bytes())
        tear_down(pool, root, watcher)
    if rows:
        summary(rows)
    print("load:", os.getloadavg())
    return status


if __name__ == "__main__":
    sys.exit(main())
