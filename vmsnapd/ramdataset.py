"""RAM dumps kept on ZFS below `[daemon] ram_dataset`, in a form zfs send based replication carries.

One filesystem per dump (vmsnapd.replica for the names): a cycle creates `<ram_dataset>/<key>_<stamp>`, writes
the dump and its manifest into it exactly as the file store does (`<encoded domain>_<stamp>.mem[.zst]` and
`.json`, 0600, folder 0700, never through a link), then snapshots it with the cycle's snapshot names. The
filesystem is never written again, so an incremental `zfs send -I` of the tree carries each dump once, and
destroying the filesystem (what deleting a dump means here) frees exactly its space — on the source when the
source prunes, on a backup host when the backup host's own retention prunes (docs/replication.md).

Only direct children of ram_dataset named like a dump dataset are ours; anything else there is never read,
changed or destroyed. On a backup host the manifests name the source host's datasets: they are read through
the config's `source` keys (vmsnapd.replica.to_local), so the sweep and restore see the local names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from vmsnapd.logsetup import dry_run_prefix
from vmsnapd.names import InvalidName, decode_name
from vmsnapd.ramstore import (DUMP_NAME, MANIFEST_SUFFIX, Compression, RamDump, RamDumpInfo, RamManifest,
                              RamStore, RamStoreError, read_manifest)
from vmsnapd.replica import dump_dataset, parse_dump_dataset, to_local
from vmsnapd.runner import Runner
from vmsnapd.zfs import DatasetBusy, DatasetNotFound, Zfs, ZfsError, ZfsListing

log = logging.getLogger(__name__)


class RamDatasetStore(RamStore):
    """The RAM dumps below `ram_dataset`; same interface as the file store (vmsnapd.ramstore.RamStore)."""

    def __init__(self, ram_dataset: str, zfs: Zfs, runner: Runner,
                 source_map: Sequence[tuple[str, str]] = (), **kwargs) -> None:
        self.ram_dataset = ram_dataset
        self.zfs = zfs
        self.source_map = list(source_map)
        self._mountpoint: Path | None = None
        super().__init__(Path("/nonexistent-ram_dataset-not-mounted"), runner, **kwargs)

    @property  # type: ignore[override]
    def ram_dir(self) -> Path:
        """ram_dataset's mountpoint (asked once); a path that does not exist when it is not mounted."""
        if self._mountpoint is None:
            try:
                info = self._listing().datasets.get(self.ram_dataset)
            except ZfsError as exc:
                log.warning("cannot list ram_dataset %s: %s", self.ram_dataset, exc)
                info = None
            if info is None or info.mountpoint is None:
                return Path(f"/nonexistent-ram_dataset-not-mounted/{self.ram_dataset}")
            self._mountpoint = Path(info.mountpoint)
        return self._mountpoint

    @ram_dir.setter
    def ram_dir(self, value: Path) -> None:  # RamStore.__init__ sets it; the mountpoint is asked instead
        pass

    def folder_for(self, domain: str) -> Path:
        """Checked writable before a cycle: ram_dataset's own folder, on the pool the dump filesystem will use.
        OSError when ram_dataset is missing or not mounted (never a folder made in its place)."""
        folder = self.ram_dir
        if self._mountpoint is None:
            raise OSError(f"ram_dataset {self.ram_dataset} does not exist or is not mounted")
        return folder

    def _listing(self) -> ZfsListing:
        listing = self.zfs.list_tree([self.ram_dataset])
        if self.ram_dataset in listing.missing_roots:
            raise DatasetNotFound(f"ram_dataset {self.ram_dataset} does not exist", self.ram_dataset)
        return listing

    # -- storing -------------------------------------------------------------------------------

    def keep(self, fresh_file: Path, info: RamDumpInfo, compression: Compression) -> RamDump:
        """Create the dump's filesystem, store dump and manifest in it, snapshot it with the cycle's names.

        Any failure destroys the filesystem again (nothing half-made stays) and raises RamStoreError; the
        fresh file is kept when the failure came before the dump was stored.
        """
        try:
            self.folder_for(info.domain)
            dataset = dump_dataset(self.ram_dataset, info.domain, info.stamp)
        except OSError as exc:
            raise RamStoreError(str(exc)) from exc
        except InvalidName as exc:
            raise RamStoreError(f"no dump dataset name for {info.domain} below {self.ram_dataset}: {exc}") from exc
        try:
            info = info.model_copy(update={"disks": [disk.model_copy(update={"relpath": self._relpath(disk)})
                                                     for disk in info.disks]})
            self.zfs.create(dataset)
            mountpoint = self.zfs.get_property(dataset, "mountpoint")
            mounted = self.zfs.get_property(dataset, "mounted")
        except ZfsError as exc:
            self._undo(dataset)
            raise RamStoreError(f"cannot create the dump filesystem {dataset}: {exc}") from exc
        if mounted != "yes" or not mountpoint.startswith("/"):
            self._undo(dataset)
            raise RamStoreError(f"the dump filesystem {dataset} is not mounted (mountpoint {mountpoint!r}): "
                                "ram_dataset needs a mountpoint")
        try:
            dump = self._keep_in(Path(mountpoint), fresh_file, info, compression)
            for name in info.snapshot_names:
                self.zfs.snapshot([dataset], name)
        except (RamStoreError, ZfsError, OSError) as exc:
            self._undo(dataset)
            raise RamStoreError(f"cannot store the RAM dump in {dataset}: {exc}") from exc
        log.info("RAM dump of %s at %s is in %s@%s", info.domain, info.stamp, dataset,
                 ",".join(info.snapshot_names))
        return dump.model_copy(update={"dataset": dataset})

    def _relpath(self, disk) -> str | None:
        """The disk's path inside its dataset (to find it in the received dataset on a backup host)."""
        try:
            mountpoint = self.zfs.get_property(disk.dataset, "mountpoint")
        except (ZfsError, InvalidName):
            return None
        if not mountpoint.startswith("/"):
            return None
        rel = os.path.relpath(disk.source, mountpoint)
        return None if rel.startswith("..") else rel

    def _undo(self, dataset: str) -> None:
        try:
            _destroy(self.zfs, dataset)
        except DatasetNotFound:
            pass
        except ZfsError as exc:
            log.error("could not destroy the half-made dump filesystem %s: %s", dataset, exc)

    # -- reading -------------------------------------------------------------------------------

    def dumps(self) -> list[RamDump]:
        """Every dump filesystem below ram_dataset with a dump file in it, manifests read with local names."""
        try:
            listing = self._listing()
        except DatasetNotFound:
            return []
        except ZfsError as exc:
            raise OSError(f"cannot list ram_dataset {self.ram_dataset}: {exc}") from exc
        found = []
        for name in sorted(listing.datasets):
            parsed = parse_dump_dataset(self.ram_dataset, name)
            mountpoint = listing.datasets[name].mountpoint
            if parsed is None or mountpoint is None:
                if parsed is not None:
                    log.warning("dump filesystem %s is not mounted: not read", name)
                continue
            dump = self._dump_in(name, Path(mountpoint), parsed[1])
            if dump is not None:
                found.append(dump)
        return found

    def _dump_in(self, dataset: str, folder: Path, stamp: str) -> RamDump | None:
        for path in sorted(folder.iterdir()):
            match = DUMP_NAME.match(path.name)
            if not match or match["stamp"] != stamp or path.is_symlink() or not path.is_file():
                continue
            manifest_path = folder / f"{path.name.split('.mem', 1)[0]}{MANIFEST_SUFFIX}"
            manifest = self._localized(read_manifest(manifest_path))
            try:
                domain = manifest.domain if manifest else decode_name(match["domain"])
            except InvalidName:
                domain = match["domain"]
            return RamDump(domain=domain, stamp=stamp, path=path, manifest_path=manifest_path,
                           manifest=manifest, size=path.stat().st_size, dataset=dataset)
        return None

    def _localized(self, manifest: RamManifest | None) -> RamManifest | None:
        """The manifest with the source host's dataset names replaced by this host's (config `source` keys)."""
        if manifest is None or not self.source_map:
            return manifest
        return manifest.model_copy(update={
            "datasets": [to_local(d, self.source_map) for d in manifest.datasets],
            "disks": [disk.model_copy(update={"dataset": to_local(disk.dataset, self.source_map)})
                      for disk in manifest.disks],
        })

    # -- deleting ------------------------------------------------------------------------------

    def discard_half_made(self, domain: str, stamp: str, dry_run: bool) -> list[str]:
        """The interrupted cycle's dump filesystem (`<key>_<stamp>`, one listing): a half-written dump in it goes
        as in the file store, and so does the filesystem when it holds no dump file at all (killed between
        `zfs create` and the dump's first byte). Unmounted, what it holds cannot be seen: it stays."""
        try:
            dataset = dump_dataset(self.ram_dataset, domain, stamp)
        except InvalidName:  # no such name could have been made for it
            return []
        info = self._listing().datasets.get(dataset)  # ZfsError, OSError: the caller says it could not look
        if info is None or not info.mountpoint:
            return []
        dump = self._dump_in(dataset, Path(info.mountpoint), stamp)
        if dump is not None:
            return self._discard_if_half_written(dump, dry_run)
        if not dry_run:
            _destroy(self.zfs, dataset)
        return [f"{dry_run_prefix(dry_run)}destroyed dump filesystem {dataset}, left without a dump by an "
                "interrupted cycle"]

    def delete(self, dump: RamDump, dry_run: bool, reason: str = "") -> int:
        """Destroy the dump's filesystem with its snapshots; returns the bytes freed (the dump and manifest)."""
        if dump.dataset is None or parse_dump_dataset(self.ram_dataset, dump.dataset) is None:
            raise OSError(f"{dump.path} is not in a dump filesystem below {self.ram_dataset}: not deleted")
        manifest_size = dump.manifest_path.stat().st_size if dump.manifest_path.exists() else 0
        freed = dump.size + manifest_size
        because = f" ({reason})" if reason else ""
        if dry_run:
            log.info("dry-run: would destroy RAM dump filesystem %s, freeing %d bytes%s", dump.dataset, freed,
                     because)
            return freed
        try:
            _destroy(self.zfs, dump.dataset)
        except DatasetNotFound:
            pass
        except ZfsError as exc:
            raise OSError(f"cannot destroy {dump.dataset}: {exc}") from exc
        log.info("destroyed RAM dump filesystem %s, freed %d bytes%s", dump.dataset, freed, because)
        return freed


def _destroy(zfs: Zfs, dataset: str) -> None:
    """Destroy a dump filesystem with its snapshots. Still busy after the adapter's retries (zfs-fuse: the mount
    namespace of a QEMU started meanwhile holds every mount it saw): force the unmount — the filesystem holds
    only a dump and its manifest, which nothing of vmsnapd has open outside a restore (under the pass lock)."""
    try:
        zfs.destroy_dataset(dataset, recursive=True)
    except DatasetBusy as exc:
        log.warning("%s stays busy (%s); destroying it with -f", dataset, exc)
        zfs.destroy_dataset(dataset, recursive=True, force=True)


def ram_dataset_notes(zfs: Zfs, ram_dataset: str) -> list[str]:
    """What `config check` (and each pass) says about ram_dataset: missing or unmounted means no RAM dump can be
    kept or read (cycles then follow on_memory_failure); said, not fatal — a backup host has no tree before its
    first replication."""
    try:
        listing = zfs.list_tree([ram_dataset])
    except (ZfsError, InvalidName) as exc:
        return [f"daemon.ram_dataset = {ram_dataset!r}: cannot be listed ({exc})"]
    info = listing.datasets.get(ram_dataset)
    if info is None:
        return [f"daemon.ram_dataset = {ram_dataset!r} does not exist: create it (zfs create {ram_dataset}) or "
                "replicate it here; until then no RAM dump is kept or found"]
    if info.mountpoint is None:
        return [f"daemon.ram_dataset = {ram_dataset!r} is not mounted: RAM dumps are files in its children, it "
                "needs a mountpoint"]
    return []
