"""The libvirt adapter: the connection and one method per verb vmsnapd needs from the hypervisor.

Everything goes through libvirt-python (no `virsh` output is parsed). libvirt's state and error codes are
turned into vmsnapd.hvtypes (DomainState, typed errors). Lifecycle and block-job events come from libvirt's
default event loop, run in one daemon thread per process (libvirt requires it to be registered before the
first connection). Everything that needs no libvirt lives elsewhere and is imported here: the domain XML
(vmsnapd.domxml), overlay files (vmsnapd.qemuimg), pause bookkeeping (vmsnapd.pausewatch), waiting for a block job
(vmsnapd.blockjob). Only this module,
and nothing the planners or the unit tests import, needs libvirt-python (tests/unit/test_layers.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import libvirt

from vmsnapd import domxml
from vmsnapd.blockjob import BlockJobEvent, BlockJobWatchers, JobPhase, finish_commit, job_phase
from vmsnapd.domxml import Disk
from vmsnapd.logsetup import first_time
from vmsnapd.hvtypes import (AgentUnavailable, BlockJobFailed, DomainNotFound, DomainState, HypervisorError,
                             HypervisorUnavailable, NoSpace, RamAlreadyCaptured)
from vmsnapd.names import validate_domain_name
from vmsnapd.overlaynames import libvirt_snapshot_name
from vmsnapd.ownership import SnapshotRecord
from vmsnapd.pausewatch import PauseEvent, PauseWatch, PauseWatchers
from vmsnapd.qemuimg import QemuImg
from vmsnapd.runner import Runner

log = logging.getLogger(__name__)

T = TypeVar("T")

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF,
    libvirt.VIR_DOMAIN_SHUTDOWN: DomainState.OTHER,
    libvirt.VIR_DOMAIN_CRASHED: DomainState.OTHER,
    libvirt.VIR_DOMAIN_NOSTATE: DomainState.OTHER,
}

_PAUSE_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: PauseEvent.SUSPENDED,
    libvirt.VIR_DOMAIN_EVENT_RESUMED: PauseEvent.RESUMED,
}

_BLOCK_JOB_EVENTS = {
    libvirt.VIR_DOMAIN_BLOCK_JOB_READY: BlockJobEvent.READY,
    libvirt.VIR_DOMAIN_BLOCK_JOB_COMPLETED: BlockJobEvent.COMPLETED,
    libvirt.VIR_DOMAIN_BLOCK_JOB_FAILED: BlockJobEvent.FAILED,
    libvirt.VIR_DOMAIN_BLOCK_JOB_CANCELED: BlockJobEvent.CANCELED,
}


def _wrap(exc: libvirt.libvirtError, what: str) -> HypervisorError:
    code = exc.get_error_code()
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return DomainNotFound(f"{what}: {exc}")
    if code in (libvirt.VIR_ERR_AGENT_UNRESPONSIVE, libvirt.VIR_ERR_AGENT_UNSYNCED) or "agent" in str(exc).lower():
        return AgentUnavailable(f"{what}: {exc}")
    if code in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_NO_CONNECT,
                libvirt.VIR_ERR_INTERNAL_ERROR) and "connect" in str(exc).lower():
        return HypervisorUnavailable(f"{what}: {exc}")
    if "No space left on device" in str(exc):  # strerror(ENOSPC), as libvirt and its I/O helper quote it
        return NoSpace(f"{what}: {exc}")
    if "paused due to previous migration" in str(exc):  # QEMU's migrate refusal in its postmigrate state
        return RamAlreadyCaptured(f"{what}: {exc}")
    return HypervisorError(f"{what}: {exc}")


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


class Hypervisor:
    # How a commit's wait wakes up (vmsnapd.blockjob): on libvirt's block-job events, and by reading the job again
    # every `block_job_recheck_s` in case an event was missed. bench/commit_wait.py sets both on the class to
    # compare with polling every 50 ms without events (vmsnapd before session 19).
    block_job_events = True
    block_job_recheck_s = 0.5

    def __init__(self, uri: str, *, dry_run: bool = False, block_job_timeout: float = 300.0,
                 runner: Runner | None = None, qemu_img: str = "qemu-img"):
        self.uri = uri
        self.dry_run = dry_run
        self.qemuimg = QemuImg(runner or Runner(), binary=qemu_img, dry_run=dry_run)
        self.block_job_timeout = block_job_timeout
        self._conn: libvirt.virConnect | None = None
        self._pauses = PauseWatchers()
        self._block_jobs = BlockJobWatchers()
        self._callback_ids: list[int] = []  # of `_conn`: each connection registers its own, deregistered on close
        self._lock = threading.Lock()

    # -- connection --------------------------------------------------------------------------------------

    def _connect(self) -> libvirt.virConnect:
        _ensure_event_loop()
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise HypervisorUnavailable(f"cannot connect to {self.uri}: {exc}") from exc
        conn.setKeepAlive(5, 3)
        callbacks = [(libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle)]
        if self.block_job_events:
            callbacks.append((libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, self._on_block_job))
        try:
            for event, callback in callbacks:
                self._callback_ids.append(conn.domainEventRegisterAny(None, event, callback, None))
        except libvirt.libvirtError as exc:
            self._release(conn)
            raise _wrap(exc, f"register for events on {self.uri}") from exc
        return conn

    @property
    def conn(self) -> libvirt.virConnect:
        """The connection, reopened when libvirtd restarted since the last call."""
        with self._lock:
            if self._conn is not None and not self._conn.isAlive():
                log.warning("connection to %s lost; reconnecting", self.uri)
                self._forget()
            if self._conn is None:
                self._conn = self._connect()
            return self._conn

    def connect(self) -> None:
        """Connect now (else the first call does); HypervisorUnavailable when libvirtd does not answer."""
        _ = self.conn

    def close(self) -> None:
        with self._lock:
            self._forget()

    def _forget(self) -> None:
        """Release the connection held and forget it, so that the next call connects afresh (one kept after its
        release answered "invalid connection pointer" to every later call). Under `_lock`."""
        if self._conn is not None:
            self._release(self._conn)
            self._conn = None

    def _release(self, conn: libvirt.virConnect) -> None:
        """Deregister this connection's event callbacks (each holds a reference that keeps it open) and close it;
        a connection libvirtd already dropped answers with errors, which change nothing. Under `_lock`."""
        ids, self._callback_ids = self._callback_ids, []
        for callback_id in ids:
            try:
                conn.domainEventDeregisterAny(callback_id)
            except libvirt.libvirtError:
                pass
        try:
            conn.close()
        except libvirt.libvirtError:
            pass

    def _on_lifecycle(self, conn, dom, event, detail, opaque) -> None:  # libvirt's callback signature
        kind = _PAUSE_EVENTS.get(event)
        if kind is not None:
            self._pauses.record(dom.name(), kind)

    def _on_block_job(self, conn, dom, disk, job_type, status, opaque) -> None:  # BLOCK_JOB_2: `disk` is the target
        kind = _BLOCK_JOB_EVENTS.get(status)
        if kind is not None:
            self._block_jobs.record(dom.name(), disk, kind)

    @contextmanager
    def watch_pauses(self, domain: str) -> Iterator[PauseWatch]:
        _ = self.conn  # connect (and register the callback) before the pause can happen
        with self._pauses.watch(domain) as watch:
            yield watch

    # -- domains -----------------------------------------------------------------------------------------

    def _drop_connection(self, conn: libvirt.virConnect) -> None:
        with self._lock:
            if self._conn is conn:
                self._forget()

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

    def state(self, name: str) -> DomainState:
        try:
            code, _reason = self._domain(name).state()
        except libvirt.libvirtError as exc:
            raise _wrap(exc, f"state of {name}") from exc
        return _STATES.get(code, DomainState.OTHER)

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
        return domxml.parse_disks(self.xml(name))

    # -- guest agent ---------------------------------------------------------------------------------------

    def fs_freeze(self, name: str) -> int:
        """Freeze the guest's file systems through the agent; returns how many were frozen."""
        return self._change(name, "fsfreeze", lambda dom: dom.fsFreeze(None, 0), dry_result=0)

    def fs_thaw(self, name: str) -> int:
        return self._change(name, "fsthaw", lambda dom: dom.fsThaw(None, 0), dry_result=0)

    def has_agent_channel(self, name: str) -> bool:
        """Whether the domain has a qemu-guest-agent channel at all (else there is nobody to ask)."""
        return domxml.has_agent_channel(self.xml(name))

    def agent_answers(self, name: str, timeout_s: int = 2) -> bool:
        import libvirt_qemu

        try:
            libvirt_qemu.qemuAgentCommand(self._domain(name), '{"execute":"guest-ping"}', timeout_s, 0)
            return True
        except libvirt.libvirtError:
            return False

    # -- freezing the disks ---------------------------------------------------------------------------------

    def create_overlay(self, overlay_path: str, backing: str, backing_format: str) -> None:
        """A cycle's qcow2 overlay on `backing`, made before the guest is touched (vmsnapd.qemuimg)."""
        self.qemuimg.create_overlay(overlay_path, backing, backing_format)

    def snapshot_external(self, name: str, overlays: dict[str, str], memory_file: str | None, *,
                          live: bool, skip_disks: list[str], reuse: bool = False) -> None:
        """External snapshot: each disk in `overlays` (target -> overlay path) goes onto its qcow2 overlay —
        made by libvirt, or with `reuse` the files `create_overlay` made (VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT:
        libvirt only opens them, nothing is created while the guest stands still) — and the RAM goes to
        `memory_file` when given. No snapshot metadata is kept in libvirt."""
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        if reuse:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
        if not memory_file:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        elif live:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE
            self._say_live_ram_caveat(name)
        self._create_snapshot(name, domxml.external_snapshot_xml(_snapshot_name(), overlays, memory_file, skip_disks),
                              flags)

    def snapshot_manual(self, name: str, targets: list[str], memory_file: str, *, live: bool,
                        skip_disks: list[str]) -> None:
        """libvirt's `snapshot=manual`: saves the RAM and leaves the guest paused for us to snapshot the disks."""
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
        if live:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE
            self._say_live_ram_caveat(name)
        self._create_snapshot(name, domxml.manual_snapshot_xml(_snapshot_name(), targets, memory_file, skip_disks),
                              flags)

    def live_ram_caveat(self, name: str) -> str | None:
        """Why a live RAM capture of `name` may not hold one instant (domxml.live_ram_caveat: a TCG guest on QEMU
        before 9.0), or None — also when libvirt cannot tell (not knowing is no reason to stop anything)."""
        try:
            return domxml.live_ram_caveat(self.xml(name), self.conn.getVersion())
        except (libvirt.libvirtError, HypervisorError) as exc:
            log.debug("cannot tell whether a live RAM capture of %s is reliable: %s", name, exc)
            return None

    def _say_live_ram_caveat(self, name: str) -> None:
        """A warning, once per domain and process, when a live RAM capture of it is known not to be reliable
        (`vmsnapd check` says it too, as a WARNING, until the policy says live = false)."""
        if not first_time(("live RAM caveat", name)):  # per process: the daemon makes a new Hypervisor every pass
            return
        caveat = self.live_ram_caveat(name)
        if caveat:
            log.warning("%s: %s", name, caveat)

    def _create_snapshot(self, name: str, snap_xml: str, flags: int) -> None:
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
                records.append(domxml.snapshot_record(snap.getName(), snap.getXMLDesc(0)))
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
        """Merge the active overlay of `target` into its backing file and pivot the disk back to it: the pivot as soon
        as libvirt says the job is ready, the return as soon as it is gone (vmsnapd.blockjob.finish_commit)."""
        if self.dry_run:
            log.info("dry-run: would blockcommit %s %s and pivot", name, target)
            return
        dom = self._domain(name)  # connected, so the callback is registered before the job can say anything
        started = time.monotonic()
        with self._block_jobs.watch(name, target) as watch:
            try:
                if not dom.blockJobInfo(target, 0):
                    dom.blockCommit(target, None, None, 0,
                                    libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE | libvirt.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW)
            except libvirt.libvirtError as exc:
                raise BlockJobFailed(f"blockcommit {name} {target}: {exc}") from exc
            finish_commit(_CommitJob(dom, name, target), watch, timeout_s=self.block_job_timeout,
                          recheck_s=self.block_job_recheck_s)
        log.debug("blockcommit %s %s: on its base after %d ms (libvirt said: %s)", name, target,
                  (time.monotonic() - started) * 1000, ", ".join(watch.events) or "nothing")

    # -- restore -------------------------------------------------------------------------------------------

    def destroy(self, name: str) -> None:
        self._change(name, "stop", lambda dom: dom.destroy() if dom.isActive() else None)

    def restore_memory(self, memory_file: str, domain_xml: str | None = None, *, paused: bool = False) -> None:
        """Start a domain, running (`paused`: left paused, e.g. until every member of a VM group is loaded), from a
        memory file. `domain_xml` None: the definition and disk paths saved inside the file; else that definition
        instead (a restore on a backup host moves the disks)."""
        if self.dry_run:
            log.info("dry-run: would restore a domain from %s", memory_file)
            return
        flag = libvirt.VIR_DOMAIN_SAVE_PAUSED if paused else libvirt.VIR_DOMAIN_SAVE_RUNNING
        try:
            self.conn.restoreFlags(memory_file, domain_xml, flag)
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
        return domxml.disks_below(self.disks(name), str(overlay_dir.resolve()))

    # -- offline: a domain that stopped while on an overlay ---------------------------------------------------

    def backing_of(self, overlay_path: str) -> tuple[str, str]:
        """(backing file, its format) recorded in a qcow2 overlay's header (vmsnapd.qemuimg)."""
        return self.qemuimg.backing_of(overlay_path)

    def backing_chain(self, image_path: str) -> list[str]:
        """Every backing file under a disk image, nearest first (vmsnapd.qemuimg): read from the image itself, so
        alike for a running and a shut-off domain (libvirt's inactive XML has no <backingStore>)."""
        return self.qemuimg.backing_chain(image_path)

    def commit_overlay_file(self, overlay_path: str, timeout_s: float = 3600.0) -> str:
        """Merge an overlay no QEMU has open into its backing file (vmsnapd.qemuimg); returns the base."""
        return self.qemuimg.commit(overlay_path, timeout_s)

    def commit_offline(self, name: str, target: str, overlay_path: str) -> str:
        """A shut-off domain whose disk `target` is on `overlay_path`: merge the overlay into its base file and
        point the persistent definition back at the base. Returns the base path. The overlay file stays
        (now redundant) for the caller to delete."""
        try:
            if self._domain(name).isActive():
                raise HypervisorError(f"{name} is running: its overlay must be committed live")
        except libvirt.libvirtError as exc:
            raise _wrap(exc, f"state of {name}") from exc
        base = self.commit_overlay_file(overlay_path)
        self.repoint_definition(name, target, overlay_path)
        return base

    def repoint_definition(self, name: str, target: str, overlay_path: str) -> str | None:
        """Point disk `target` of the persistent definition, when it names `overlay_path`, at the overlay's
        backing file (with its format). Nothing is committed: the caller knows the base holds the data.
        Returns the base, or None when the definition does not name the overlay."""
        definition = self.xml(name, inactive=True)
        if not domxml.disk_uses_file(definition, target, overlay_path):
            return None  # the definition does not use the overlay (only the live XML did)
        base, fmt = self.backing_of(overlay_path)
        if self.dry_run:
            log.info("dry-run: would point the definition of %s %s back at %s", name, target, base)
            return base
        try:
            self.conn.defineXML(domxml.repoint_disk(definition, target, overlay_path, base, fmt))
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
                    files += domxml.disk_files(dom.XMLDesc(flags))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # undefined since it was listed
                raise _wrap(exc, "domain definitions") from exc
            result[name] = list(dict.fromkeys(files))
        return result

    def network_active(self, name: str) -> bool | None:
        """Whether the libvirt network `name` is active; None when it is not defined here."""
        try:
            return bool(self.conn.networkLookupByName(name).isActive())
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                return None
            raise _wrap(exc, f"network {name}") from exc

    def storage_pool_paths(self) -> dict[str, str]:
        """Every libvirt storage pool (active or not) -> its target path (empty for pools without one)."""
        paths = {}
        try:
            for pool in self.conn.listAllStoragePools(0):
                paths[pool.name()] = domxml.storage_pool_path(pool.XMLDesc(0))
        except libvirt.libvirtError as exc:
            raise _wrap(exc, "list storage pools") from exc
        return paths


class _CommitJob:
    """An active commit job as vmsnapd.blockjob.finish_commit reads and pivots it."""

    def __init__(self, dom: libvirt.virDomain, domain: str, target: str):
        self.dom = dom
        self.domain = domain
        self.target = target

    def phase(self) -> JobPhase:
        try:
            return job_phase(self.dom.blockJobInfo(self.target, 0))
        except libvirt.libvirtError as exc:
            raise BlockJobFailed(f"block job {self.domain} {self.target}: {exc}") from exc

    def pivot(self) -> bool:
        try:
            self.dom.blockJobAbort(self.target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
            return True
        except libvirt.libvirtError as exc:
            # "not ready for pivot" until QEMU says the job is synchronised: the next event or re-read tries again.
            if "not ready" not in str(exc).lower() and "pivot" not in str(exc).lower():
                raise BlockJobFailed(f"pivot {self.domain} {self.target}: {exc}") from exc
            return False


def _snapshot_name() -> str:
    return libvirt_snapshot_name(int(time.time()))
