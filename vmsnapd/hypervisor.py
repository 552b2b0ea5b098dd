"""The libvirt adapter: one method per verb vmsnapd needs from the hypervisor.

Everything goes through libvirt-python (no `virsh` output is parsed). libvirt errors are turned into
typed exceptions. Lifecycle and block-job events come from libvirt's default event loop, run in one
daemon thread per process (libvirt requires it to be registered before the first connection).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar
from xml.sax.saxutils import quoteattr

import libvirt

from vmsnapd.names import validate_domain_name
from vmsnapd.overlaynames import libvirt_snapshot_name
from vmsnapd.ownership import SnapshotRecord
from vmsnapd.runner import CommandError, Runner

log = logging.getLogger(__name__)

T = TypeVar("T")
# Keep the usual prefix when a definition is rewritten (commit_offline); libvirt reads namespaces by URI anyway.
ET.register_namespace("qemu", "http://libvirt.org/schemas/domain/qemu/1.0")

RUNNING = "running"
PAUSED = "paused"
SHUTOFF = "shutoff"
OTHER = "other"

_STATE_NAMES = {
    libvirt.VIR_DOMAIN_RUNNING: RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: PAUSED,
    libvirt.VIR_DOMAIN_SHUTOFF: SHUTOFF,
    libvirt.VIR_DOMAIN_SHUTDOWN: OTHER,
    libvirt.VIR_DOMAIN_CRASHED: OTHER,
    libvirt.VIR_DOMAIN_NOSTATE: OTHER,
}


class HypervisorError(Exception):
    pass


class DomainNotFound(HypervisorError):
    pass


class HypervisorUnavailable(HypervisorError):
    """libvirtd does not answer (not running, restarting)."""


class AgentUnavailable(HypervisorError):
    """The guest agent does not answer: no agent channel, agent not running, or it timed out."""


class BlockJobFailed(HypervisorError):
    pass


def _wrap(exc: libvirt.libvirtError, what: str) -> HypervisorError:
    code = exc.get_error_code()
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return DomainNotFound(f"{what}: {exc}")
    if code in (libvirt.VIR_ERR_AGENT_UNRESPONSIVE, libvirt.VIR_ERR_AGENT_UNSYNCED) or "agent" in str(exc).lower():
        return AgentUnavailable(f"{what}: {exc}")
    if code in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_NO_CONNECT,
                libvirt.VIR_ERR_INTERNAL_ERROR) and "connect" in str(exc).lower():
        return HypervisorUnavailable(f"{what}: {exc}")
    return HypervisorError(f"{what}: {exc}")


@dataclass(frozen=True)
class Disk:
    target: str  # vda
    source: str  # file path or block device
    kind: str  # "file" | "block"
    driver_type: str  # raw | qcow2 | ...
    readonly: bool
    shareable: bool
    device: str  # disk | cdrom | floppy | lun

    @property
    def snapshottable(self) -> bool:
        """Disks a cycle must capture: writable, not shared with another VM, not removable media."""
        return self.device in ("disk", "lun") and not self.readonly and not self.shareable and bool(self.source)


def parse_disks(domain_xml: str) -> list[Disk]:
    root = ET.fromstring(domain_xml)
    disks = []
    for el in root.findall("./devices/disk"):
        target = el.find("target")
        source = el.find("source")
        driver = el.find("driver")
        path = ""
        if source is not None:
            path = source.get("file") or source.get("dev") or ""
        disks.append(Disk(
            target=target.get("dev", "") if target is not None else "",
            source=path,
            kind=el.get("type", "file"),
            driver_type=driver.get("type", "raw") if driver is not None else "raw",
            readonly=el.find("readonly") is not None,
            shareable=el.find("shareable") is not None,
            device=el.get("device", "disk"),
        ))
    return disks


def parse_backing(qemu_img_json: str, overlay_path: str) -> tuple[str, str]:
    """(backing file, its format) from `qemu-img info --output=json`; HypervisorError on anything else."""
    try:
        info = json.loads(qemu_img_json)
    except (ValueError, RecursionError) as exc:
        raise HypervisorError(f"{overlay_path}: qemu-img info printed no readable JSON ({exc})") from None
    if not isinstance(info, dict):
        raise HypervisorError(f"{overlay_path}: qemu-img info printed {type(info).__name__}, not an object")
    base = info.get("full-backing-filename") or info.get("backing-filename")
    fmt = info.get("backing-filename-format") or "raw"
    if not base:
        raise HypervisorError(f"{overlay_path} has no backing file: not an overlay vmsnapd can commit")
    if (not isinstance(base, str) or "\0" in base or not base.startswith("/")
            or not isinstance(fmt, str) or not re.fullmatch(r"[a-z0-9_-]{1,32}", fmt)):
        raise HypervisorError(f"{overlay_path}: qemu-img info gives an unusable backing file {base!r} ({fmt!r})")
    return base, fmt


def nvram_path(domain_xml: str) -> str | None:
    el = ET.fromstring(domain_xml).find("./os/nvram")
    return el.text.strip() if el is not None and el.text else None


# -- event loop -------------------------------------------------------------------------------------------

_event_loop_lock = threading.Lock()
_event_loop_started = False


def _ensure_event_loop() -> None:
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        # libvirt prints every error to stderr by default; ours are raised as typed exceptions and
        # logged where they are handled (an expected "no agent" must not look like a failure).
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        libvirt.virEventRegisterDefaultImpl()

        def loop() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=loop, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


@dataclass
class PauseWatch:
    """Collects SUSPENDED/RESUMED lifecycle events of one domain to measure how long the guest stood still."""

    domain: str
    events: list[tuple[float, str]] = field(default_factory=list)

    def record(self, kind: str) -> None:
        self.events.append((time.monotonic(), kind))

    def paused_ms(self) -> int | None:
        total = 0.0
        since: float | None = None
        for stamp, kind in self.events:
            if kind == "suspended" and since is None:
                since = stamp
            elif kind == "resumed" and since is not None:
                total += stamp - since
                since = None
        if since is not None:  # still paused (pause method before resume, or a paused VM)
            total += time.monotonic() - since
        return int(total * 1000) if self.events else None


class Hypervisor:
    def __init__(self, uri: str, *, dry_run: bool = False, block_job_timeout: float = 300.0,
                 runner: Runner | None = None, qemu_img: str = "qemu-img"):
        self.uri = uri
        self.dry_run = dry_run
        self.runner = runner or Runner()
        self.qemu_img = qemu_img
        self.block_job_timeout = block_job_timeout
        self._conn: libvirt.virConnect | None = None
        self._watches: dict[str, list[PauseWatch]] = {}
        self._callback_id: int | None = None
        self._lock = threading.Lock()

    # -- connection --------------------------------------------------------------------------------------

    def _connect(self) -> libvirt.virConnect:
        _ensure_event_loop()
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise HypervisorUnavailable(f"cannot connect to {self.uri}: {exc}") from exc
        conn.setKeepAlive(5, 3)
        self._callback_id = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None)
        return conn

    @property
    def conn(self) -> libvirt.virConnect:
        """The connection, reopened when libvirtd restarted since the last call."""
        with self._lock:
            if self._conn is None or not self._conn.isAlive():
                if self._conn is not None:
                    log.warning("connection to %s lost; reconnecting", self.uri)
                self._conn = self._connect()
            return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                if self._callback_id is not None:
                    self._conn.domainEventDeregisterAny(self._callback_id)
                self._conn.close()
            except libvirt.libvirtError:
                pass
            self._conn = None

    def _on_lifecycle(self, conn, dom, event, detail, opaque) -> None:  # noqa: ANN001 (libvirt callback)
        kind = {libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
                libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed"}.get(event)
        if kind is None:
            return
        for watch in self._watches.get(dom.name(), []):
            watch.record(kind)

    @contextmanager
    def watch_pauses(self, domain: str) -> Iterator[PauseWatch]:
        _ = self.conn  # connect (and register the callback) before the pause can happen
        watch = PauseWatch(domain)
        self._watches.setdefault(domain, []).append(watch)
        try:
            yield watch
        finally:
            # Events are delivered asynchronously by the loop thread; give the last one a moment.
            time.sleep(0.05)
            self._watches[domain].remove(watch)

    # -- domains -----------------------------------------------------------------------------------------

    def _drop_connection(self, conn: libvirt.virConnect) -> None:
        with self._lock:
            if self._conn is conn:
                self._conn = None
        try:
            conn.close()
        except libvirt.libvirtError:
            pass

    def _domain(self, name: str) -> libvirt.virDomain:
        validate_domain_name(name)
        conn = self.conn
        try:
            return conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise _wrap(exc, f"domain {name}") from exc
            # libvirtd dropped us (restart, client-disconnect): isAlive() may not know yet. One fresh
            # connection, one more try; a second failure is the real answer.
            log.warning("looking up %s failed (%s); reconnecting to %s", name, exc, self.uri)
            self._drop_connection(conn)
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            raise _wrap(exc, f"domain {name}") from exc

    def _change(self, name: str, what: str, call: Callable[[libvirt.virDomain], T], dry_result: T = None) -> T:
        """Run `call` on domain `name`, a verb that changes the guest: in dry run only log that it would;
        libvirt's errors become typed ones naming `what` and the domain."""
        if self.dry_run:
            log.info("dry-run: would %s %s", what, name)
            return dry_result
        try:
            return call(self._domain(name))
        except libvirt.libvirtError as exc:
            raise _wrap(exc, f"{what} {name}") from exc

    def domain_names(self) -> list[str]:
        try:
            return sorted(d.name() for d in self.conn.listAllDomains(0))
        except libvirt.libvirtError as exc:
            raise _wrap(exc, "list domains") from exc

    def exists(self, name: str) -> bool:
        try:
            self._domain(name)
            return True
        except DomainNotFound:
            return False

    def state(self, name: str) -> str:
        try:
            code, _reason = self._domain(name).state()
        except libvirt.libvirtError as exc:
            raise _wrap(exc, f"state of {name}") from exc
        return _STATE_NAMES.get(code, OTHER)

    def xml(self, name: str, inactive: bool = False) -> str:
        flags = libvirt.VIR_DOMAIN_XML_SECURE | (libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0)
        try:
            return self._domain(name).XMLDesc(flags)
        except libvirt.libvirtError as exc:
            raise _wrap(exc, f"XML of {name}") from exc

    def memory_bytes(self, name: str) -> int:
        try:
            return self._domain(name).info()[2] * 1024  # current memory, KiB
        except libvirt.libvirtError as exc:
            raise _wrap(exc, f"memory of {name}") from exc

    def disks(self, name: str) -> list[Disk]:
        return parse_disks(self.xml(name))

    # -- guest agent ---------------------------------------------------------------------------------------

    def fs_freeze(self, name: str) -> int:
        """Freeze the guest's file systems through the agent; returns how many were frozen."""
        return self._change(name, "fsfreeze", lambda dom: dom.fsFreeze(None, 0), dry_result=0)

    def fs_thaw(self, name: str) -> int:
        return self._change(name, "fsthaw", lambda dom: dom.fsThaw(None, 0), dry_result=0)

    def has_agent_channel(self, name: str) -> bool:
        """Whether the domain has a qemu-guest-agent channel at all (else there is nobody to ask)."""
        root = ET.fromstring(self.xml(name))
        return any(t.get("name") == "org.qemu.guest_agent.0" for t in root.findall("./devices/channel/target"))

    def agent_answers(self, name: str, timeout_s: int = 2) -> bool:
        import libvirt_qemu

        try:
            libvirt_qemu.qemuAgentCommand(self._domain(name), '{"execute":"guest-ping"}', timeout_s, 0)
            return True
        except libvirt.libvirtError:
            return False

    # -- freezing the disks ---------------------------------------------------------------------------------

    def snapshot_external(self, name: str, overlays: dict[str, str], memory_file: str | None, *,
                          live: bool, skip_disks: list[str]) -> None:
        """External snapshot: each disk in `overlays` (target -> overlay path) gets a fresh qcow2 overlay,
        the RAM goes to `memory_file` when given. No snapshot metadata is kept in libvirt."""
        disks_xml = "".join(
            f"<disk name={quoteattr(t)} snapshot='external' type='file'>"
            f"<driver type='qcow2'/><source file={quoteattr(p)}/></disk>" for t, p in overlays.items()
        ) + "".join(f"<disk name={quoteattr(t)} snapshot='no'/>" for t in skip_disks)
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        if memory_file:
            memory_xml = f"<memory snapshot='external' file={quoteattr(memory_file)}/>"
            if live:
                flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE
        else:
            memory_xml = "<memory snapshot='no'/>"
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        self._create_snapshot(name, memory_xml, disks_xml, flags)

    def snapshot_manual(self, name: str, targets: list[str], memory_file: str, *, live: bool,
                        skip_disks: list[str]) -> None:
        """libvirt's `snapshot=manual`: saves the RAM and leaves the guest paused for us to snapshot the disks."""
        disks_xml = "".join(f"<disk name={quoteattr(t)} snapshot='manual'/>" for t in targets) + "".join(
            f"<disk name={quoteattr(t)} snapshot='no'/>" for t in skip_disks)
        memory_xml = f"<memory snapshot='external' file={quoteattr(memory_file)}/>"
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
        if live:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE
        self._create_snapshot(name, memory_xml, disks_xml, flags)

    def _create_snapshot(self, name: str, memory_xml: str, disks_xml: str, flags: int) -> None:
        snap_xml = (f"<domainsnapshot><name>{libvirt_snapshot_name(int(time.time()))}</name>"
                    f"{memory_xml}<disks>{disks_xml}</disks></domainsnapshot>")
        if self.dry_run:
            log.info("dry-run: would create libvirt snapshot of %s: %s", name, snap_xml)
            return
        log.debug("snapshotCreateXML %s flags=%#x %s", name, flags, snap_xml)
        try:
            self._domain(name).snapshotCreateXML(snap_xml, flags)
        except libvirt.libvirtError as exc:
            raise _wrap(exc, f"snapshot of {name}") from exc

    def suspend(self, name: str) -> None:
        self._change(name, "pause", lambda dom: dom.suspend())

    def resume(self, name: str) -> None:
        self._change(name, "resume", lambda dom: dom.resume())

    def snapshot_records(self, name: str) -> list[SnapshotRecord]:
        """The libvirt snapshot records (metadata) of a domain and the files each names (disks, memory)."""
        records = []
        try:
            for snap in self._domain(name).listAllSnapshots(0):
                records.append(_snapshot_record(snap.getName(), snap.getXMLDesc(0)))
        except libvirt.libvirtError as exc:
            raise _wrap(exc, f"snapshot metadata of {name}") from exc
        return records

    def delete_snapshot_metadata(self, name: str, snapshots: list[str]) -> list[str]:
        """Remove the records `snapshots` of domain `name` (metadata only: no file is touched). Which records
        are vmsnapd's is decided by the caller (vmsnapd.ownership)."""
        removed = []
        try:
            dom = self._domain(name)
            for snapshot in snapshots:
                if not self.dry_run:
                    dom.snapshotLookupByName(snapshot, 0).delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
                removed.append(snapshot)
        except libvirt.libvirtError as exc:
            raise _wrap(exc, f"snapshot metadata of {name}") from exc
        return removed

    # -- committing back ---------------------------------------------------------------------------------

    def commit_active(self, name: str, target: str) -> None:
        """Merge the active overlay of `target` into its backing file and pivot the disk back to it."""
        if self.dry_run:
            log.info("dry-run: would blockcommit %s %s and pivot", name, target)
            return
        dom = self._domain(name)
        try:
            if not dom.blockJobInfo(target, 0):
                dom.blockCommit(target, None, None, 0,
                                libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE | libvirt.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW)
        except libvirt.libvirtError as exc:
            raise BlockJobFailed(f"blockcommit {name} {target}: {exc}") from exc
        deadline = time.monotonic() + self.block_job_timeout
        while True:
            try:
                info = dom.blockJobInfo(target, 0)
            except libvirt.libvirtError as exc:
                raise BlockJobFailed(f"block job {name} {target}: {exc}") from exc
            if not info:
                raise BlockJobFailed(f"block job of {name} {target} vanished before pivot")
            if info.get("end", 0) and info.get("cur") == info.get("end"):
                try:
                    dom.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                    break
                except libvirt.libvirtError as exc:
                    # "not ready for pivot" until QEMU says the job is synchronised: try again shortly.
                    if "not ready" not in str(exc).lower() and "pivot" not in str(exc).lower():
                        raise BlockJobFailed(f"pivot {name} {target}: {exc}") from exc
            if time.monotonic() > deadline:
                raise BlockJobFailed(
                    f"blockcommit of {name} {target} not ready after {self.block_job_timeout:.0f}s; "
                    "the VM keeps running on its overlay (safe); `vmsnapd recover` finishes it")
            time.sleep(0.05)
        # The pivot completes asynchronously: wait until the job is gone and the disk is on its base.
        while dom.blockJobInfo(target, 0):
            if time.monotonic() > deadline:
                raise BlockJobFailed(f"pivot of {name} {target} did not complete")
            time.sleep(0.05)

    # -- restore -------------------------------------------------------------------------------------------

    def destroy(self, name: str) -> None:
        self._change(name, "stop", lambda dom: dom.destroy() if dom.isActive() else None)

    def shutdown(self, name: str, timeout_s: float) -> bool:
        """Ask the guest to shut down; True when it went off within the timeout."""
        dom = self._domain(name)
        try:
            if dom.isActive():
                dom.shutdown()
        except libvirt.libvirtError as exc:
            raise _wrap(exc, f"shutdown {name}") from exc
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not dom.isActive():
                return True
            time.sleep(0.2)
        return False

    def restore_memory(self, memory_file: str, domain_xml: str | None, *, running: bool = True) -> None:
        flags = libvirt.VIR_DOMAIN_SAVE_RUNNING if running else libvirt.VIR_DOMAIN_SAVE_PAUSED
        if self.dry_run:
            log.info("dry-run: would restore a domain from %s", memory_file)
            return
        try:
            self.conn.restoreFlags(memory_file, domain_xml, flags)
        except libvirt.libvirtError as exc:
            raise _wrap(exc, f"restore from {memory_file}") from exc

    def start(self, name: str) -> None:
        self._change(name, "start", lambda dom: dom.create())

    def undefine(self, name: str) -> None:
        try:
            dom = self._domain(name)
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        except libvirt.libvirtError as exc:
            raise _wrap(exc, f"undefine {name}") from exc

    def define(self, xml: str) -> str:
        try:
            return self.conn.defineXML(xml).name()
        except libvirt.libvirtError as exc:
            raise _wrap(exc, "define domain") from exc

    def overlay_disks(self, name: str, overlay_dir: Path) -> list[Disk]:
        """Disks whose active source lives in overlay_dir: a cycle did not finish (ours or a script's)."""
        base = str(overlay_dir.resolve()).rstrip("/") + "/"
        return [d for d in self.disks(name) if d.source.startswith(base)]

    # -- offline: a domain that stopped while on an overlay ---------------------------------------------------

    def backing_of(self, overlay_path: str) -> tuple[str, str]:
        """(backing file, its format) recorded in a qcow2 overlay's header."""
        try:
            out = self.runner.run([self.qemu_img, "info", "-U", "--output=json", overlay_path], timeout=60).stdout
        except CommandError as exc:
            raise HypervisorError(f"cannot read overlay {overlay_path}: {exc}") from exc
        return parse_backing(out, overlay_path)

    def commit_overlay_file(self, overlay_path: str, timeout_s: float = 3600.0) -> str:
        """Merge an overlay no QEMU has open into its backing file (`qemu-img commit`); returns the base."""
        base, _fmt = self.backing_of(overlay_path)
        if self.dry_run:
            log.info("dry-run: would qemu-img commit %s into %s", overlay_path, base)
            return base
        try:
            self.runner.run([self.qemu_img, "commit", "-q", "-d", "-f", "qcow2", overlay_path], timeout=timeout_s)
        except CommandError as exc:
            raise BlockJobFailed(f"qemu-img commit {overlay_path}: {exc}") from exc
        return base

    def commit_offline(self, name: str, target: str, overlay_path: str) -> str:
        """A shut-off domain whose disk `target` is on `overlay_path`: merge the overlay into its base file and
        point the persistent definition back at the base. Returns the base path. The overlay file stays
        (now redundant) for the caller to delete."""
        try:
            if self._domain(name).isActive():
                raise HypervisorError(f"{name} is running: its overlay must be committed live")
        except libvirt.libvirtError as exc:
            raise _wrap(exc, f"state of {name}") from exc
        base, _fmt = self.backing_of(overlay_path)
        self.commit_overlay_file(overlay_path)
        self.repoint_definition(name, target, overlay_path)
        return base

    def repoint_definition(self, name: str, target: str, overlay_path: str) -> str | None:
        """Point disk `target` of the persistent definition, when it names `overlay_path`, at the overlay's
        backing file (with its format). Nothing is committed: the caller knows the base holds the data.
        Returns the base, or None when the definition does not name the overlay."""
        dom = self._domain(name)
        try:
            root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE))
        except libvirt.libvirtError as exc:
            raise _wrap(exc, f"definition of {name}") from exc
        disk = None
        for el in root.findall("./devices/disk"):
            tgt, src = el.find("target"), el.find("source")
            if tgt is not None and tgt.get("dev") == target and src is not None and src.get("file") == overlay_path:
                disk = el
        if disk is None:  # the definition does not use the overlay (only the live XML did)
            return None
        base, fmt = self.backing_of(overlay_path)
        disk.find("source").set("file", base)
        driver = disk.find("driver")
        if driver is not None:
            driver.set("type", fmt)
        for backing in disk.findall("backingStore"):
            disk.remove(backing)
        if self.dry_run:
            log.info("dry-run: would point the definition of %s %s back at %s", name, target, base)
            return base
        try:
            self.conn.defineXML(ET.tostring(root, encoding="unicode"))
        except libvirt.libvirtError as exc:
            raise _wrap(exc, f"redefine {name} on {base}") from exc
        return base

    # -- the whole host: what the folder check and recovery look at, whatever the domains' names -----------------

    def all_domain_disks(self) -> dict[str, list[tuple[str, str]]]:
        """Every defined domain -> (target, file) of every disk source and backing file its live and persistent
        definitions name. Read straight from the listing: no name of a domain we do not manage is validated."""
        result: dict[str, list[tuple[str, str]]] = {}
        try:
            domains = self.conn.listAllDomains(0)
        except libvirt.libvirtError as exc:
            raise _wrap(exc, "list domains") from exc
        for dom in domains:
            files: list[tuple[str, str]] = []
            try:
                name = dom.name()
                for flags in (0, libvirt.VIR_DOMAIN_XML_INACTIVE):
                    files += disk_files(dom.XMLDesc(flags))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # undefined since it was listed
                raise _wrap(exc, "domain definitions") from exc
            result[name] = list(dict.fromkeys(files))
        return result

    def storage_pool_paths(self) -> dict[str, str]:
        """Every libvirt storage pool (active or not) -> its target path (empty for pools without one)."""
        paths = {}
        try:
            for pool in self.conn.listAllStoragePools(0):
                el = ET.fromstring(pool.XMLDesc(0)).find("./target/path")
                paths[pool.name()] = el.text.strip() if el is not None and el.text else ""
        except libvirt.libvirtError as exc:
            raise _wrap(exc, "list storage pools") from exc
        return paths


def disk_files(domain_xml: str) -> list[tuple[str, str]]:
    """(target, file) for every disk source of a domain definition and every backing file it names."""
    files = []
    for el in ET.fromstring(domain_xml).findall("./devices/disk"):
        target = el.find("target")
        dev = target.get("dev", "") if target is not None else ""
        for source in el.iter("source"):
            path = source.get("file") or source.get("dev") or ""
            if path:
                files.append((dev, path))
    return files


def _snapshot_record(name: str, snapshot_xml: str) -> SnapshotRecord:
    """Only the snapshot's own <disks> and <memory>: the copy of the domain definition inside is not what
    the snapshot made."""
    root = ET.fromstring(snapshot_xml)
    disks = []
    for el in root.findall("./disks/disk"):
        source = el.find("source")
        path = (source.get("file") or source.get("dev") or "") if source is not None else ""
        if path:
            disks.append((el.get("name", ""), path))
    memory = root.find("./memory")
    memory_file = memory.get("file") if memory is not None else None
    return SnapshotRecord(name=name, disks=tuple(disks), memory=memory_file or None)
