"""The paused window seen from outside vmsnapd: libvirt lifecycle events of a domain with their timestamps,
and timed prototypes of the capture paths (the classic virsh scripts, vmsnapd's pause method step by step).

Used by bench/pause.py and bench/consistency.py. Nothing here is product code: it measures it.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import libvirt_qemu

from _common import BenchError, lab

_loop_started = False


def _start_event_loop() -> None:
    global _loop_started
    if _loop_started:
        return
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    libvirt.virEventRegisterDefaultImpl()
    threading.Thread(target=lambda: [libvirt.virEventRunDefaultImpl() for _ in iter(int, 1)],
                     name="bench-libvirt-events", daemon=True).start()
    _loop_started = True


@dataclass
class Events:
    """SUSPENDED/RESUMED lifecycle events of one domain, stamped with time.monotonic() on arrival."""

    domain: str
    stamps: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mark(self) -> int:
        with self.lock:
            return len(self.stamps)

    def pauses_since(self, mark: int) -> list[tuple[float, float]]:
        """(suspended, resumed) pairs recorded after `mark`; a pause still open is left out."""
        with self.lock:
            evs = self.stamps[mark:]
        out, since = [], None
        for t, kind in evs:
            if kind == "suspended" and since is None:
                since = t
            elif kind == "resumed" and since is not None:
                out.append((since, t))
                since = None
        return out

    def wait_resumed(self, mark: int, timeout: float = 5.0) -> list[tuple[float, float]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = self.pauses_since(mark)
            if p:
                return p
            time.sleep(0.005)
        return self.pauses_since(mark)


class Watcher:
    """A second libvirt connection of the benchmark that records the lifecycle events of every domain."""

    def __init__(self) -> None:
        _start_event_loop()
        self.conn = libvirt.open(lab.URI)
        self.events: dict[str, Events] = {}
        self._cb = self.conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on, None)

    def _on(self, _conn, dom, event, _detail, _opaque) -> None:  # noqa: ANN001 (libvirt callback)
        kind = {libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended", libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed"}.get(event)
        ev = self.events.get(dom.name())
        if kind and ev is not None:
            with ev.lock:
                ev.stamps.append((time.monotonic(), kind))

    def watch(self, domain: str) -> Events:
        return self.events.setdefault(domain, Events(domain))

    def close(self) -> None:
        try:
            self.conn.domainEventDeregisterAny(self._cb)
            self.conn.close()
        except libvirt.libvirtError:
            pass


def pause_ms(pauses: list[tuple[float, float]]) -> float:
    return sum(r - s for s, r in pauses) * 1000


def virsh(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(["virsh", "-q", "-c", lab.URI, *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise BenchError(f"virsh {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def classic_cycle(vm, dataset: str, events: Events, i: int) -> dict:
    """The pre/post scripts people ran around sanoid: external disk + memory snapshot, not live (virsh), then
    `zfs snapshot`, then `blockcommit --active --pivot` back onto the base. Returns pause and wall time."""
    overlay = vm.workdir / f"classic{i}.qcow2"
    memory = vm.workdir / f"classic{i}.mem"
    disk = vm.disks[0].target
    mark = events.mark()
    t0 = time.monotonic()
    virsh("snapshot-create-as", vm.name, f"classic{i}", "--no-metadata", "--atomic",
          "--diskspec", f"{disk},snapshot=external,file={overlay}",
          "--diskspec", f"{vm.token_target},snapshot=no",
          "--memspec", f"file={memory},snapshot=external")
    lab.zfs("snapshot", f"{dataset}@classic{i}")
    virsh("blockcommit", vm.name, disk, "--active", "--pivot", "--wait")
    wall = time.monotonic() - t0
    pauses = events.wait_resumed(mark)
    size = memory.stat().st_size
    overlay.unlink(missing_ok=True)
    memory.unlink(missing_ok=True)
    return {"pause_ms": pause_ms(pauses), "wall": wall, "size": size, "pauses": len(pauses)}


def qmp(dom, cmd: dict) -> dict:
    return json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(cmd), 0))


def qmp_round_trip_ms(dom, n: int = 20) -> float:
    """Median wall time of one `query-status` through libvirt (client → libvirtd → QEMU → back)."""
    times = []
    for _ in range(n):
        t = time.monotonic()
        qmp(dom, {"execute": "query-status"})
        times.append((time.monotonic() - t) * 1000)
    return statistics.median(times)


def completed_downtime_ms(dom) -> float | None:
    """QEMU's own downtime figure of the last completed migration-to-file (stop → RAM+devices written)."""
    try:
        stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except libvirt.libvirtError:
        return None
    return stats.get("downtime")


def pause_method_steps(vm, dataset: str, events: Events, memory_file: Path, i: int, *, live: bool,
                       max_downtime_ms: int | None = None, keep_file: bool = False) -> dict:
    """vmsnapd's pause method done by hand, every step stamped: libvirt `snapshot=manual` with the RAM to
    `memory_file` (the guest is left paused), `zfs snapshot`, `resume`. With `max_downtime_ms` QEMU's
    migration downtime limit is lowered first (libvirt's virDomainMigrateSetMaxDowntime)."""
    dom = vm.dom
    if max_downtime_ms is not None:
        default_downtime = dom.migrateGetMaxDowntime(0)
        dom.migrateSetMaxDowntime(max_downtime_ms, 0)
    disk = vm.disks[0].target
    xml = (f"<domainsnapshot><name>bench{i}</name><memory snapshot='external' file='{memory_file}'/><disks>"
           f"<disk name='{disk}' snapshot='manual'/><disk name='{vm.token_target}' snapshot='no'/>"
           f"</disks></domainsnapshot>")
    flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA | (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE if live else 0)
    mark = events.mark()
    t_call = time.monotonic()
    try:
        dom.snapshotCreateXML(xml, flags)
    finally:
        if max_downtime_ms is not None:
            # QEMU keeps the limit for the process's lifetime: put it back, or every later cycle of every other
            # method on this guest runs at the lowered limit too (it did until session 18: bench/pause.py's
            # "first capture after boot" was the only cycle of a run at QEMU's default).
            dom.migrateSetMaxDowntime(default_downtime, 0)
    t_ret = time.monotonic()
    lab.zfs("snapshot", f"{dataset}@bench{i}")
    t_zfs = time.monotonic()
    dom.resume()
    t_res = time.monotonic()
    pauses = events.wait_resumed(mark)
    if len(pauses) != 1:
        raise BenchError(f"expected one pause, saw {pauses}")
    (s, r), = pauses
    downtime = completed_downtime_ms(dom)
    size = memory_file.stat().st_size
    if not keep_file:
        memory_file.unlink(missing_ok=True)
    ms = lambda a, b: (b - a) * 1000  # noqa: E731
    return {
        "pause_ms": ms(s, r), "wall": t_res - t_call, "size": size,
        "ram_live_before_stop": ms(t_call, s),      # live RAM passes while the guest runs
        "stop_to_return": ms(s, t_ret),             # final RAM pass + device state + libvirt's bookkeeping
        "qemu_downtime": downtime,                  # QEMU's own figure for the stopped part of the migration
        "zfs_snapshot": ms(t_ret, t_zfs),
        "resume_call": ms(t_zfs, t_res),            # virDomainResume: QMP `cont` + libvirt status XML
        "resume_event_lag": ms(t_res, r),           # until the RESUMED event reached us
    }


def background_snapshot_probe(dom) -> str:
    """Can QEMU here take a background snapshot (RAM written after the guest resumed, under userfaultfd
    write protection)? Returns "available" or QEMU's refusal; the capability is switched off again."""
    cap = {"execute": "migrate-set-capabilities",
           "arguments": {"capabilities": [{"capability": "background-snapshot", "state": True}]}}
    reply = qmp(dom, cap)
    if "error" in reply:
        return reply["error"].get("desc", str(reply["error"]))
    cap["arguments"]["capabilities"][0]["state"] = False
    qmp(dom, cap)
    return "available"
