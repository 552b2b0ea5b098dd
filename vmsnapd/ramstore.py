"""RAM dumps kept in `ram_dir`: which cycle owns which dump, and when a dump may go.

Layout: `ram_dir/<domain>/` (0700) holds per cycle one dump `<domain>_<stamp>.mem` (or `.mem.zst`) and
its manifest `<domain>_<stamp>.json` (both 0600), `<stamp>` being the cycle's `YYYY-MM-DD_HH:MM:SS` and
`<domain>` the domain name as `names.encode_name` writes it in a file name (`web` stays `web`, `-web`
becomes `%2Dweb`). Folders and files are made as `vmsnapd.files` says: root's, never through a link.

The manifest is written last, atomically: a dump file without a manifest is half-written (a crash
while it was stored; `RamDump.manifest` is None) and is never deleted by a sweep unless forced.
Deletion removes the manifest first for the same reason: a crash in between leaves
a dump without manifest, which is again "half-written", never a manifest pointing at nothing.

Only files whose names match the pattern above, inside a directory named like their domain, are
ours; anything else in `ram_dir` is never read, moved or deleted.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import logging
import os
import re
import shutil
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Iterator

from pydantic import BaseModel, Field, ValidationError, field_validator

from vmsnapd import __version__
from vmsnapd.backing import BackingFile
from vmsnapd.logsetup import dry_run_prefix
from vmsnapd.files import (chmod_private, create_private_file, ensure_private_directory, fsync_directory,
                           fsync_file, write_file_atomically)
from vmsnapd.models import Compression, CycleMethod
from vmsnapd.names import STAMP_PATTERN, InvalidName, decode_name, encode_name, validate_domain_name
from vmsnapd.runner import CommandError, Runner

log = logging.getLogger(__name__)


DUMP_NAME = re.compile(rf"^(?P<domain>.+)_(?P<stamp>{STAMP_PATTERN})\.mem(?P<zst>\.zst)?$")
# A compressed dump decompressed for a restore: `.<domain>_<stamp>.mem.restore` in the restore's work folder.
RESTORE_IMAGE = re.compile(rf"^\.(?P<domain>.+)_(?P<stamp>{STAMP_PATTERN})\.mem\.restore$")
MANIFEST_SUFFIX = ".json"
COPY_CHUNK = 4 * 1024 * 1024


class RamStoreError(Exception):
    """A RAM dump could not be stored or read back."""


class DumpDisk(BaseModel):
    target: str
    source: str
    dataset: str
    relpath: str | None = None  # the disk's path inside `dataset` (ram_dataset stores record it: restore elsewhere)


class RamDumpInfo(BaseModel):
    """What the cycle knows about its RAM dump; the store adds sizes, checksum and compression."""

    domain: str
    stamp: str = Field(pattern=rf"^{STAMP_PATTERN}$")
    datasets: list[str]
    snapshot_names: list[str]
    domain_xml: str
    disks: list[DumpDisk] = []
    backing: list[BackingFile] = []  # backing files of its disks outside `datasets`, as they were (vmsnapd.backing)
    method: CycleMethod
    live: bool
    quiesced: bool
    pause_ms: int | None = None

    @field_validator("domain")
    @classmethod
    def _domain_is_a_domain_name(cls, domain: str) -> str:
        # Any name libvirt accepts: it becomes a file name only through encode_name.
        return validate_domain_name(domain)

    def snapshots(self) -> set[tuple[str, str]]:
        """(dataset, short name) of every snapshot of the cycle: one name set on every dataset."""
        return {(dataset, name) for dataset in self.datasets for name in self.snapshot_names}


class RamManifest(RamDumpInfo):
    size: int
    raw_size: int
    sha256: str
    compression: Compression
    created_at: str
    vmsnapd_version: str


class RamDump(BaseModel):
    domain: str
    stamp: str
    path: Path
    manifest_path: Path
    manifest: RamManifest | None  # None: missing (half-written) or unreadable
    size: int
    dataset: str | None = None  # the filesystem holding it (ram_dataset stores), destroyed with it

    @property
    def compressed(self) -> bool:
        return self.path.name.endswith(".zst")


class RamStore:
    """The RAM dumps under `ram_dir`. `zstd_bin` and the runner are injected (no global binary paths)."""

    def __init__(
        self,
        ram_dir: Path,
        runner: Runner,
        zstd_bin: str = "zstd",
        zstd_level: int = 3,
        zstd_timeout_s: float = 3600.0,
    ):
        self.ram_dir = ram_dir
        self.runner = runner
        self.zstd_bin = zstd_bin
        self.zstd_level = zstd_level
        self.zstd_timeout_s = zstd_timeout_s

    # -- storing -------------------------------------------------------------------------------

    def keep(self, fresh_file: Path, info: RamDumpInfo, compression: Compression) -> RamDump:
        """Move the fresh RAM file into the store (compressed if asked) and write its manifest last.

        On failure the partial dump is removed and the fresh file is left where it was, so the
        cycle can still decide (`on_memory_failure`) what to do with it.
        """
        return self._keep_in(self.folder_for(info.domain), fresh_file, info, compression)

    def _keep_in(self, domain_dir: Path, fresh_file: Path, info: RamDumpInfo, compression: Compression) -> RamDump:
        ensure_private_directory(self.ram_dir)
        ensure_private_directory(domain_dir)
        stem = f"{encode_name(info.domain)}_{info.stamp}"
        dump_path = domain_dir / (f"{stem}.mem.zst" if compression == "zstd" else f"{stem}.mem")
        manifest_path = domain_dir / f"{stem}{MANIFEST_SUFFIX}"
        if manifest_path.exists() or any(domain_dir.glob(f"{glob.escape(stem)}.mem*")):
            raise RamStoreError(f"a RAM dump for {info.domain} at {info.stamp} already exists in {domain_dir}")
        created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        started = time.monotonic()
        try:
            raw_size = fresh_file.stat().st_size
            if compression == "zstd":
                self._compress(fresh_file, dump_path)
                size, sha256 = hash_and_sync(dump_path)
            else:
                size, sha256 = self._move_uncompressed(fresh_file, dump_path)
            fsync_directory(domain_dir)
            manifest = RamManifest(
                **info.model_dump(),
                size=size,
                raw_size=raw_size,
                sha256=sha256,
                compression=compression,
                created_at=created_at,
                vmsnapd_version=__version__,
            )
            write_file_atomically(manifest_path, manifest.model_dump_json(indent=1).encode())
        except (OSError, CommandError) as exc:
            try:
                dump_path.unlink()
            except FileNotFoundError:
                pass
            raise RamStoreError(f"cannot store RAM dump of {info.domain} in {domain_dir}: {exc}") from exc
        # Only now, with the manifest durable, is the fresh file no longer needed.
        if fresh_file.exists():
            fresh_file.unlink()
            fsync_directory(fresh_file.parent)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        log.info(
            "kept RAM dump of %s at %s: %s (%d bytes, %d raw, %s) in %d ms",
            info.domain, info.stamp, dump_path, size, raw_size, compression, elapsed_ms,
        )
        return RamDump(
            domain=info.domain, stamp=info.stamp, path=dump_path, manifest_path=manifest_path,
            manifest=manifest, size=size,
        )

    def compression_problem(self, compression: Compression) -> str | None:
        """Why a dump cannot be stored with `compression` on this host (its compressor is missing), or None: asked
        before the guest's RAM is captured, and by the folder check."""
        if compression != "zstd" or shutil.which(self.zstd_bin):
            return None
        return (f"ram_compression = \"zstd\", but {self.zstd_bin} cannot be found (not installed, or not on PATH; "
                "Debian: apt install zstd)")

    def folder_for(self, domain: str) -> Path:
        """The folder a new dump of `domain` is written to (checked writable before each cycle)."""
        return self.ram_dir / encode_name(domain)

    def _compress(self, source: Path, target: Path) -> None:
        # zstd streams the file itself (never whole in memory); -T0 uses every core. No -f: zstd
        # refuses to overwrite an existing file, which is what we want.
        self.runner.run(
            [self.zstd_bin, "-q", "-T0", f"-{self.zstd_level}", "-o", str(target), "--", str(source)],
            timeout=self.zstd_timeout_s,
        )
        # zstd copies the source's mode; the 0700 directory kept it private meanwhile.
        chmod_private(target)
        # Decode the whole frame once so a dump that cannot be restored is noticed now, not at restore.
        self.runner.run([self.zstd_bin, "-q", "-t", "--", str(target)], timeout=self.zstd_timeout_s)

    def _move_uncompressed(self, source: Path, target: Path) -> tuple[int, str]:
        try:
            # Same file system: a hard link is instant and, unlike rename, never replaces a file.
            os.link(source, target)
        except OSError as exc:
            # Another file system, or hard links not allowed there: copy instead.
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            return copy_hashing(source, target)
        chmod_private(target)
        return hash_and_sync(target)

    # -- reading -------------------------------------------------------------------------------

    def dumps(self) -> list[RamDump]:
        found: list[RamDump] = []
        if not self.ram_dir.is_dir():
            return found
        for domain_dir in sorted(self.ram_dir.iterdir()):
            if domain_dir.is_symlink() or not domain_dir.is_dir():
                continue
            for path in sorted(domain_dir.iterdir()):
                match = DUMP_NAME.match(path.name)
                if not match or match["domain"] != domain_dir.name or path.is_symlink() or not path.is_file():
                    continue
                stem = path.name.split(".mem", 1)[0]
                manifest_path = domain_dir / f"{stem}{MANIFEST_SUFFIX}"
                manifest = read_manifest(manifest_path)
                found.append(
                    RamDump(
                        domain=domain_of_folder(domain_dir.name, manifest),
                        stamp=match["stamp"],
                        path=path,
                        manifest_path=manifest_path,
                        manifest=manifest,
                        size=path.stat().st_size,
                    )
                )
        return found

    def find(self, domain: str, stamp: str) -> RamDump | None:
        for dump in self.dumps():
            if dump.domain == domain and dump.stamp == stamp:
                return dump
        return None

    def verify(self, dump: RamDump) -> bool:
        if dump.manifest is None:
            log.warning("RAM dump %s has no readable manifest, cannot verify it", dump.path)
            return False
        size, sha256 = hash_file(dump.path)
        if size != dump.manifest.size or sha256 != dump.manifest.sha256:
            log.error(
                "RAM dump %s is damaged: %d bytes sha256 %s, manifest says %d bytes sha256 %s",
                dump.path, size, sha256, dump.manifest.size, dump.manifest.sha256,
            )
            return False
        return True

    @contextmanager
    def restore_source(self, dump: RamDump, work_dir: Path) -> Iterator[Path]:
        """An uncompressed RAM file for restore: the dump itself, or a temporary decompressed copy in
        `work_dir` (removed afterwards). Call `verify` first when the checksum matters."""
        if not dump.compressed:
            yield dump.path
            return
        ensure_private_directory(work_dir)
        temp = work_dir / f".{dump.path.name.removesuffix('.zst')}.restore"
        if temp.exists():
            temp.unlink()  # leftover of an interrupted restore; zstd would refuse to overwrite it
        try:
            self.runner.run(
                [self.zstd_bin, "-q", "-d", "-o", str(temp), "--", str(dump.path)], timeout=self.zstd_timeout_s
            )
            chmod_private(temp)
            yield temp
        finally:
            try:
                temp.unlink()
            except FileNotFoundError:
                pass

    def restore_leftovers(self, work_dir: Path) -> list[Path]:
        """Decompressed images a restore killed mid-way left in `work_dir` (restore_source removes its image when it
        ends; a kill -9 or a power loss does not let it): regular files named as restore_source names them, never
        a link. Each is the size of a guest's RAM. The caller holds the pass lock, so no restore is using one."""
        try:
            entries = sorted(work_dir.iterdir())
        except FileNotFoundError:
            return []
        return [p for p in entries if RESTORE_IMAGE.match(p.name) and not p.is_symlink() and p.is_file()]

    # -- deleting ------------------------------------------------------------------------------

    def discard_half_made(self, domain: str, stamp: str, dry_run: bool) -> list[str]:
        """An interrupted cycle (its journal record names `domain` and `stamp`, and no dump kept) left its dump
        half-written: a dump file without manifest. Delete it; returns what was done. A dump with a manifest is
        whole (the manifest is written last) and stays, also when the record could not say so any more."""
        dump = self.find(domain, stamp)
        return self._discard_if_half_written(dump, dry_run) if dump is not None else []

    def _discard_if_half_written(self, dump: RamDump, dry_run: bool) -> list[str]:
        if dump.manifest is not None or dump.manifest_path.exists():  # whole, or damaged (evidence): stays
            return []
        self.delete(dump, dry_run, "half-written by an interrupted cycle")
        return [f"{dry_run_prefix(dry_run)}deleted half-written RAM dump {dump.path}"]

    def delete(self, dump: RamDump, dry_run: bool, reason: str = "") -> int:
        """Delete a dump and its manifest; returns the bytes freed (or that would be, in dry run)."""
        manifest_size = dump.manifest_path.stat().st_size if dump.manifest_path.exists() else 0
        freed = dump.size + manifest_size
        because = f" ({reason})" if reason else ""
        if dry_run:
            log.info("dry-run: would delete RAM dump %s, freeing %d bytes%s", dump.path, freed, because)
            return freed
        # Manifest first: a crash in between leaves a dump without manifest, i.e. "half-written".
        for path in (dump.manifest_path, dump.path):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        fsync_directory(dump.path.parent)
        log.info("deleted RAM dump %s, freed %d bytes%s", dump.path, freed, because)
        return freed


def domain_of_folder(folder_name: str, manifest: RamManifest | None) -> str:
    """The domain whose dumps `ram_dir/<folder_name>` holds: the manifest's name when it matches the
    folder (also a shortened encoding, or a folder named raw before the encoding existed), else the
    decoded folder name, else the folder name itself (an old raw name that is no valid encoding)."""
    if manifest is not None and folder_name in (encode_name(manifest.domain), manifest.domain):
        return manifest.domain
    try:
        return decode_name(folder_name)
    except InvalidName:
        return folder_name


def read_manifest(path: Path) -> RamManifest | None:
    try:
        return RamManifest.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, ValidationError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning("RAM dump manifest %s is unreadable: %s", path, reason)
        return None


def chunks(stream: BinaryIO) -> Iterator[memoryview]:
    """The rest of an unbuffered binary file, COPY_CHUNK at a time, read into ONE buffer: each chunk is valid only
    until the next is read. A fresh 4 MiB object per read (`read(n)`) cost the kernel a page fault and a zeroed page
    for every 4 KiB of it in a fresh thread (malloc maps big blocks anew): 8 RAM files of 94 MB kept at once took
    3.2 CPU-s of system time that way, 0.4 s with one buffer (docs/benchmarks.md, "8 running VMs")."""
    buffer = bytearray(COPY_CHUNK)
    view = memoryview(buffer)
    while n := stream.readinto(buffer):
        yield view[:n]


def hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as stream:
        for chunk in chunks(stream):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def hash_and_sync(path: Path) -> tuple[int, str]:
    """Checksum a file just written by someone else (zstd, a hard link) and make it durable."""
    size, sha256 = hash_file(path)
    fsync_file(path)
    return size, sha256


def copy_hashing(source: Path, target: Path) -> tuple[int, str]:
    """Copy in chunks (a RAM file can be larger than our memory), hashing on the way; fsync."""
    digest = hashlib.sha256()
    size = 0
    fd = create_private_file(target)
    try:
        with open(source, "rb", buffering=0) as stream:
            for chunk in chunks(stream):
                digest.update(chunk)
                size += len(chunk)
                view = chunk
                while view:
                    view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return size, digest.hexdigest()
