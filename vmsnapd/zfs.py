"""The ZFS adapter: one method per `zfs`/`zpool` verb, typed errors parsed from stderr.

It speaks the subset OpenZFS and zfs-fuse 0.7 both understand and detects the dialect once, for the
few things that differ: OpenZFS snapshots several datasets atomically in one command and destroys
several snapshots of a dataset in one call (`ds@a,b`); zfs-fuse takes one name per command.
Every name is validated before it reaches argv. In dry-run mode the verbs that change the pool log
what they would run and return without running it; reads still happen.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Sequence

from vmsnapd.names import InvalidName, validate_dataset_name, validate_snapshot_name
from vmsnapd.models import Snapshot
from vmsnapd.runner import CommandError, CommandFailed, Runner

log = logging.getLogger(__name__)

OPENZFS = "openzfs"
ZFS_FUSE = "zfs-fuse"

# How often a destroy that hit "dataset is busy" is retried: zfs-fuse unmounts lag behind.
BUSY_RETRIES = 5
BUSY_RETRY_DELAY_S = 0.4

# OpenZFS reads `ds@a,b,c` from one argv string; Linux allows 128 KiB per string. Batches stay well below.
DESTROY_BATCH_MAX_CHARS = 16 * 1024


class ZfsError(Exception):
    """A zfs/zpool command failed. `target` names the dataset or snapshot, `stderr_tail` what zfs said."""

    def __init__(self, message: str, target: str = "", stderr_tail: str = ""):
        super().__init__(message)
        self.target = target
        self.stderr_tail = stderr_tail


class DatasetNotFound(ZfsError):
    pass


class DatasetBusy(ZfsError):
    """Busy: mounted and in use, held (`zfs hold`), or a fuse unmount still in flight."""


class SnapshotExists(ZfsError):
    pass


class HasDependents(ZfsError):
    """Dependent clones or children stand in the way of a destroy."""


def dependents_named(stderr: str) -> list[str]:
    """The datasets a refused destroy names as depending on it (`use '-R' to destroy the following datasets:` and
    one name a line after it, as OpenZFS and zfs-fuse print them); names ZFS would not allow are left out."""
    lines = stderr.splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if "destroy the following datasets" in line), len(lines))
    names = []
    for line in lines[start:]:
        try:
            names.append(validate_dataset_name(line.strip()))
        except InvalidName:
            continue
    return names


class ZfsUnavailable(ZfsError):
    """The zfs binary is missing or the ZFS daemon/module does not answer."""


class ZfsOutputError(ZfsError):
    """zfs/zpool printed something vmsnapd cannot read (`-` where a number belongs, a missing column, a name
    ZFS would not allow): that dataset or pool fails with this message, the others go on."""


_STDERR_CLASSES: list[tuple[re.Pattern[str], type[ZfsError]]] = [
    (re.compile(r"does not exist|no such pool|no such dataset"), DatasetNotFound),
    (re.compile(r"dataset is busy|pool is busy|device busy"), DatasetBusy),
    (re.compile(r"already exists"), SnapshotExists),
    (re.compile(r"more recent snapshots|dependent clones|has children"), HasDependents),
    (re.compile(r"failed to initialize ZFS library|connect.*zfs-fuse|/dev/zfs"), ZfsUnavailable),
]


def _classify(exc: CommandError, target: str) -> ZfsError:
    text = exc.stderr_tail or str(exc)
    for pattern, cls in _STDERR_CLASSES:
        if pattern.search(text):
            return cls(f"{target}: {text.strip().splitlines()[0] if text.strip() else exc}", target, text)
    if not isinstance(exc, CommandFailed):
        return ZfsUnavailable(f"{target}: {exc}", target, text)
    return ZfsError(f"{target}: {text.strip() or exc}", target, text)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    mountpoint: str | None  # None: not mounted or `none`/`legacy`
    creation: datetime

    @property
    def pool(self) -> str:
        return self.name.split("/", 1)[0]


@dataclass
class ZfsListing:
    """What one listing call returns: every filesystem and every snapshot under the listed pools."""

    datasets: dict[str, DatasetInfo] = field(default_factory=dict)
    snapshots: list[Snapshot] = field(default_factory=list)
    missing_roots: list[str] = field(default_factory=list)
    # Datasets whose lines could not be read, with why: left out of `datasets` and `snapshots` (so nothing is
    # taken or destroyed on a guess) and reported by the pass.
    unreadable: dict[str, str] = field(default_factory=dict)

    # Per-dataset index of `snapshots`, rebuilt when the list is replaced or grows: a pass asks once per dataset,
    # and scanning every snapshot each time was quadratic on hosts with thousands of datasets.
    _index: dict[str, list[Snapshot]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _indexed: tuple[list[Snapshot] | None, int] = field(default=(None, 0), init=False, repr=False, compare=False)

    def snapshots_of(self, dataset: str) -> list[Snapshot]:
        if self._indexed[0] is not self.snapshots or self._indexed[1] != len(self.snapshots):
            index: dict[str, list[Snapshot]] = {}
            for snap in self.snapshots:
                index.setdefault(snap.dataset, []).append(snap)
            self._index, self._indexed = index, (self.snapshots, len(self.snapshots))
        return list(self._index.get(dataset, ()))


_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit() also accepts '²', which int() refuses


def _count(value: str, what: str) -> int:
    if not _DIGITS.fullmatch(value.strip()):
        raise ZfsOutputError(f"{what}: expected a number, zfs printed {value!r}")
    return int(value)


def _epoch(value: str) -> datetime:
    seconds = _count(value, "creation")
    try:
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise ZfsOutputError(f"creation: {value!r} is not a time") from None


def parse_capacity(out: str, pool: str) -> int:
    """`zpool list -H -o name,capacity POOL` → percent used; ZfsOutputError on anything else."""
    fields = out.strip("\n").split("\t")
    if len(fields) != 2 or fields[0] != pool:
        raise ZfsOutputError(f"{pool}: unexpected zpool list output {out.strip()[:200]!r}", pool)
    value = fields[1].strip().removesuffix("%")
    try:
        percent = _count(value, "capacity")
    except ZfsOutputError as exc:
        raise ZfsOutputError(f"{pool}: {exc}", pool) from None
    if percent > 100:
        raise ZfsOutputError(f"{pool}: capacity {fields[1]!r} is not a percentage", pool)
    return percent


def _split_property_lines(stdout: str) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """`name<TAB>property<TAB>value` lines → properties per name, and names whose lines were malformed."""
    props: dict[str, dict[str, str]] = {}
    bad: dict[str, str] = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        parts = line.split("\t", 2)  # a value (a mountpoint) may itself hold a tab
        if len(parts) != 3:
            bad.setdefault(parts[0], f"unreadable zfs get line {line[:200]!r}")
            continue
        name, prop, value = parts
        props.setdefault(name, {})[prop] = value
    return props, bad


def _parse_entry(name: str, p: dict[str, str]) -> DatasetInfo | Snapshot | None:
    """One dataset or snapshot from its properties; None for a type vmsnapd ignores (bookmarks)."""
    kind = p.get("type")
    if kind == "snapshot":
        dataset, _, snapname = name.partition("@")
        validate_dataset_name(dataset)
        validate_snapshot_name(snapname)
        refs = p.get("userrefs", "-")
        return Snapshot(dataset=dataset, name=snapname, creation=_epoch(p.get("creation", "")),
                        userrefs=0 if refs.strip() in ("-", "") else _count(refs, "userrefs"))
    if kind not in ("filesystem", "volume"):
        if kind is None:
            raise ZfsOutputError("zfs printed no type")
        return None
    validate_dataset_name(name)
    creation = _epoch(p.get("creation", ""))
    if kind == "volume":  # OpenZFS zvols hold VM disks too (/dev/zvol/NAME); never mounted
        return DatasetInfo(name, None, creation)
    mountpoint = p.get("mountpoint")
    usable = p.get("mounted") == "yes" and mountpoint and mountpoint.startswith("/")
    return DatasetInfo(name, mountpoint if usable else None, creation)


def parse_tree(stdout: str) -> ZfsListing:
    """The output of `zfs get -H -p -r -o name,property,value type,creation,userrefs,mountpoint,mounted`.

    A dataset with any line vmsnapd cannot read (its own or one of its snapshots') is left out with the reason
    in `unreadable`; the other datasets are listed as usual.
    """
    listing = ZfsListing()
    props, bad = _split_property_lines(stdout)
    unreadable = {name.partition("@")[0]: why for name, why in bad.items()}
    for name, p in props.items():
        try:
            entry = _parse_entry(name, p)
        except (ZfsOutputError, InvalidName) as exc:
            unreadable.setdefault(name.partition("@")[0], f"{name}: {exc}")
            continue
        if isinstance(entry, Snapshot):
            listing.snapshots.append(entry)
        elif entry is not None:
            listing.datasets[name] = entry
    for dataset, why in unreadable.items():
        log.error("zfs: leaving %s out of this pass: %s", dataset, why)
        listing.datasets.pop(dataset, None)
    listing.unreadable = dict(sorted(unreadable.items()))
    # Stable sort: within one second, zfs lists snapshots in the order they were taken (txg order).
    listing.snapshots = sorted((s for s in listing.snapshots if s.dataset not in unreadable),
                               key=lambda s: (s.dataset, s.creation))
    return listing


def destroy_batches(dataset: str, names: Sequence[str]) -> list[list[str]]:
    """`names` (in their order) cut into runs whose `dataset@a,b,c` stays within DESTROY_BATCH_MAX_CHARS."""
    batches: list[list[str]] = []
    size = 0
    for name in names:
        if batches and size + 1 + len(name) <= DESTROY_BATCH_MAX_CHARS:
            batches[-1].append(name)
            size += 1 + len(name)
        else:
            batches.append([name])
            size = len(dataset) + 1 + len(name)
    return batches


def _snapshot_target(dataset: str, snapname: str) -> str:
    return f"{validate_dataset_name(dataset)}@{validate_snapshot_name(snapname)}"


def _dataset_or_snapshot(target: str) -> str:
    if "@" in target:
        dataset, snapname = target.split("@", 1)
        return _snapshot_target(dataset, snapname)
    return validate_dataset_name(target)


_PROPERTY = re.compile(r"[a-z][a-z0-9_.:-]*")


def _property_name(prop: str) -> str:
    """A native (`mountpoint`) or user (`com.example:note`) property name, safe in an argv."""
    if not isinstance(prop, str) or not _PROPERTY.fullmatch(prop) or len(prop) > 256:
        raise InvalidName(f"{prop!r} is not a ZFS property name")
    return prop


class Zfs:
    def __init__(
        self,
        runner: Runner,
        *,
        zfs_bin: str = "zfs",
        zpool_bin: str = "zpool",
        dry_run: bool = False,
        timeout: float = 120.0,
    ):
        self.runner = runner
        self.zfs_bin = zfs_bin
        self.zpool_bin = zpool_bin
        self.dry_run = dry_run
        self.timeout = timeout
        self._dialect: str | None = None
        self._dialect_lock = threading.Lock()  # prune and take run datasets side by side: detect once, not per thread

    # -- plumbing -------------------------------------------------------------------------------------

    def _read(self, argv: Sequence[str], target: str) -> str:
        try:
            return self.runner.run(argv, timeout=self.timeout).stdout
        except CommandError as exc:
            raise _classify(exc, target) from exc

    def _change(self, argv: Sequence[str], target: str) -> None:
        if self.dry_run:
            log.info("dry-run: would run %s", " ".join(argv))
            return
        try:
            self.runner.run(argv, timeout=self.timeout)
        except CommandError as exc:
            raise _classify(exc, target) from exc

    @property
    def dialect(self) -> str:
        """`openzfs` or `zfs-fuse`, detected once: zfs-fuse's `zfs list` has no `-p`."""
        with self._dialect_lock:
            return self._detect_dialect()

    def _detect_dialect(self) -> str:
        if self._dialect is None:
            argv = [self.zfs_bin, "list", "-H", "-p", "-o", "name", "-d", "0"]
            try:
                result = self.runner.run(argv, check=False, timeout=self.timeout)
            except CommandError as exc:
                raise _classify(exc, "zfs") from exc
            if "invalid option 'p'" in result.stderr:
                self._dialect = ZFS_FUSE
            elif result.returncode == 0:
                self._dialect = OPENZFS
            else:  # inconclusive (daemon down, ...): say so, and do not remember a guess
                raise _classify(CommandFailed(argv, "zfs list failed", result.returncode, result.stderr), "zfs")
            log.debug("zfs dialect: %s", self._dialect)
        return self._dialect

    # -- reading --------------------------------------------------------------------------------------

    def pool_capacity(self, pool: str) -> int:
        """Percent of the pool in use, as `zpool list` reports it."""
        if "/" in validate_dataset_name(pool):
            raise InvalidName(f"{pool!r} is a dataset, not a pool")
        return parse_capacity(self._read([self.zpool_bin, "list", "-H", "-o", "name,capacity", pool], pool), pool)

    def list_tree(self, roots: Iterable[str]) -> ZfsListing:
        """Every filesystem and snapshot under `roots`, in one `zfs get -r` call.

        Roots that do not exist are reported in `missing_roots` instead of failing the whole listing.
        """
        roots = sorted({validate_dataset_name(r) for r in roots})
        if not roots:
            return ZfsListing()
        argv = [self.zfs_bin, "get", "-H", "-p", "-r", "-o", "name,property,value",
                "type,creation,userrefs,mountpoint,mounted", *roots]
        try:
            result = self.runner.run(argv, check=False, timeout=self.timeout)
        except CommandError as exc:  # timeout, zfs missing
            raise _classify(exc, ",".join(roots)) from exc
        missing: list[str] = []
        if result.returncode != 0:
            missing = re.findall(r"cannot open '([^']+)': dataset does not exist", result.stderr)
            other = [line for line in result.stderr.splitlines()
                     if line.strip() and "dataset does not exist" not in line]
            if other or not missing:
                raise _classify(CommandFailed(argv, "zfs get failed", result.returncode, result.stderr),
                                ",".join(roots))
        listing = parse_tree(result.stdout)
        listing.missing_roots = sorted(missing)
        return listing

    def get_property(self, target: str, prop: str) -> str:
        """A property of a dataset or a snapshot (`ds@name`); `-` when a user property is not set."""
        name = _dataset_or_snapshot(target)
        _property_name(prop)
        return self._read([self.zfs_bin, "get", "-H", "-p", "-o", "value", prop, name], name).strip()

    # -- changing -------------------------------------------------------------------------------------

    def snapshot(self, datasets: Sequence[str], snapname: str) -> bool:
        """Snapshot every dataset in `datasets` with one name. Returns True when it was atomic.

        OpenZFS takes several names in one command, atomically — within one pool: its ioctl refuses names of
        several pools (EXDEV, "multiple snapshots of same fs not allowed"), so datasets of several pools get one
        command per pool. zfs-fuse takes one name per command. Either way, several commands are all or nothing
        (when one fails, the snapshots the others took are destroyed again) and the caller is told (False), so it
        can say so.
        """
        targets = [_snapshot_target(ds, snapname) for ds in datasets]
        if len(targets) == 1:
            self._change([self.zfs_bin, "snapshot", targets[0]], targets[0])
            return True
        if self.dialect == OPENZFS:
            by_pool: dict[str, list[str]] = {}
            for target in targets:
                by_pool.setdefault(target.split("@", 1)[0].split("/", 1)[0], []).append(target)
            self._all_or_nothing(list(by_pool.values()))
            return len(by_pool) == 1
        self._all_or_nothing([[target] for target in targets])
        return False

    def _all_or_nothing(self, commands: list[list[str]]) -> None:
        """One `zfs snapshot` per list of targets, in order; when one fails, the snapshots the ones before took are
        destroyed again (never one that existed before: that one made its command fail, it was not taken here)."""
        taken: list[str] = []
        try:
            for command in commands:
                self._change([self.zfs_bin, "snapshot", *command], ",".join(command))
                taken += command
        except ZfsError:
            for target in reversed(taken):
                dataset, name = target.split("@", 1)
                try:
                    self.destroy_snapshot(dataset, name)
                except ZfsError as undo:
                    log.error("could not undo partial snapshot %s: %s", target, undo)
            raise

    def snapshot_recursive(self, dataset: str, snapname: str) -> None:
        target = _snapshot_target(dataset, snapname)
        self._change([self.zfs_bin, "snapshot", "-r", target], target)

    def destroy_snapshot(self, dataset: str, snapname: str) -> None:
        target = _snapshot_target(dataset, snapname)
        for attempt in range(BUSY_RETRIES):
            try:
                self._change([self.zfs_bin, "destroy", target], target)
                return
            except DatasetBusy:
                # A held snapshot is busy for good; a lagging fuse unmount is busy for a moment.
                if attempt == BUSY_RETRIES - 1 or self.is_held(dataset, snapname):
                    raise
                time.sleep(BUSY_RETRY_DELAY_S)

    def destroy_snapshots(self, dataset: str, snapnames: Sequence[str]) -> dict[str, ZfsError]:
        """Destroy several snapshots of one dataset; returns the ones that failed with their error.

        OpenZFS destroys `ds@a,b,c` in one call; if that call fails, the names are retried one by one
        so that one held or busy snapshot does not keep the others alive. zfs-fuse goes one by one.
        """
        validate_dataset_name(dataset)
        names = [validate_snapshot_name(n) for n in snapnames]
        if not names:
            return {}
        if self.dialect == OPENZFS and len(names) > 1:
            return self._destroy_batched(dataset, names)
        return self._destroy_one_by_one(dataset, names)

    def _destroy_batched(self, dataset: str, names: list[str]) -> dict[str, ZfsError]:
        """OpenZFS: `zfs destroy ds@a,b,c`, oldest first, in batches of at most DESTROY_BATCH_MAX_CHARS; a batch
        that fails is retried one by one (OpenZFS destroys all of a batch or none)."""
        failed: dict[str, ZfsError] = {}
        for batch in destroy_batches(dataset, names):
            if len(batch) == 1:
                failed.update(self._destroy_one_by_one(dataset, batch))
                continue
            target = f"{dataset}@{','.join(batch)}"
            try:
                self._change([self.zfs_bin, "destroy", target], target)
            except ZfsError as exc:
                log.debug("batched destroy of %s failed (%s); going one by one", target, exc)
                failed.update(self._destroy_one_by_one(dataset, batch))
        return failed

    def _destroy_one_by_one(self, dataset: str, names: list[str]) -> dict[str, ZfsError]:
        failed: dict[str, ZfsError] = {}
        for name in names:
            try:
                self.destroy_snapshot(dataset, name)
            except DatasetNotFound:
                pass  # already gone: what we wanted
            except ZfsError as exc:
                failed[name] = exc
        return failed

    def is_held(self, dataset: str, snapname: str) -> bool:
        value = self.get_property(f"{dataset}@{snapname}", "userrefs")
        return value not in ("-", "") and _count(value, f"{dataset}@{snapname} userrefs") > 0

    def clone(self, dataset: str, snapname: str, new_dataset: str, properties: dict[str, str] | None = None) -> None:
        target = _snapshot_target(dataset, snapname)
        opts: list[str] = []
        for key, value in (properties or {}).items():
            opts += ["-o", f"{key}={value}"]
        self._change([self.zfs_bin, "clone", *opts, target, validate_dataset_name(new_dataset)], new_dataset)

    def create(self, dataset: str) -> None:
        """`zfs create` (a RAM dump's own filesystem below ram_dataset)."""
        self._change([self.zfs_bin, "create", validate_dataset_name(dataset)], dataset)

    def destroy_dataset(self, dataset: str, *, recursive: bool = False, force: bool = False) -> None:
        """`zfs destroy [-r] [-f]`; `force` unmounts even a busy mount (zfs-fuse keeps a dataset "busy" for good
        when a QEMU that had a file open there was killed)."""
        validate_dataset_name(dataset)
        if "/" not in dataset:
            raise ValueError(f"refusing to destroy a pool's root dataset {dataset!r}")
        argv = [self.zfs_bin, "destroy", *(["-r"] if recursive else []), *(["-f"] if force else []), dataset]
        for attempt in range(BUSY_RETRIES):
            try:
                self._change(argv, dataset)
                return
            except DatasetBusy:
                if attempt == BUSY_RETRIES - 1:
                    raise
                time.sleep(BUSY_RETRY_DELAY_S)

    def set_property(self, target: str, prop: str, value: str) -> None:
        """Set a property of a dataset or a snapshot (`ds@name`: user properties only)."""
        name = _dataset_or_snapshot(target)
        _property_name(prop)
        if "\0" in value:
            raise InvalidName(f"{prop}: a property value must not contain NUL")
        self._change([self.zfs_bin, "set", f"{prop}={value}", name], name)

    # -- restore: setting a dataset aside and back (verbs both dialects have) -------------------------

    def property_source(self, target: str, prop: str) -> tuple[str, str]:
        """(value, source) of a dataset's or a snapshot's property; source is `local`, `default`, `received`,
        `inherited from X`, `-` (an unset user property)."""
        name = _dataset_or_snapshot(target)
        _property_name(prop)
        out = self._read([self.zfs_bin, "get", "-H", "-p", "-o", "value,source", prop, name], name)
        parts = out.rstrip("\n").rsplit("\t", 1)
        if len(parts) != 2:
            raise ZfsError(f"{name}: unexpected `zfs get {prop}` output {out[:80]!r}", name, out)
        return parts[0], parts[1]

    def rename(self, dataset: str, new_name: str) -> None:
        """`zfs rename`: a filesystem (with its snapshots and children) to a new name in the same pool."""
        validate_dataset_name(dataset)
        validate_dataset_name(new_name)
        if "/" not in dataset or dataset.split("/", 1)[0] != new_name.split("/", 1)[0]:
            raise InvalidName(f"cannot rename {dataset!r} to {new_name!r}: not a non-root dataset of the same pool")
        for attempt in range(BUSY_RETRIES):
            try:
                self._change([self.zfs_bin, "rename", dataset, new_name], dataset)
                return
            except DatasetBusy:  # the unmount of a file QEMU just closed lags behind (zfs-fuse)
                if attempt == BUSY_RETRIES - 1:
                    raise
                time.sleep(BUSY_RETRY_DELAY_S)

    def promote(self, dataset: str) -> None:
        """`zfs promote`: the clone takes over its origin's snapshots up to the origin snapshot."""
        self._change([self.zfs_bin, "promote", validate_dataset_name(dataset)], dataset)

    def unmount(self, dataset: str) -> None:
        """`zfs unmount`: needed before a rename on zfs-fuse, whose remount says "busy" while the kernel still
        caches inodes of files used since the mount (any disk QEMU had open)."""
        self._change([self.zfs_bin, "unmount", validate_dataset_name(dataset)], dataset)

    def mount(self, dataset: str) -> None:
        """`zfs mount`; a filesystem that is mounted already is left as it is."""
        validate_dataset_name(dataset)
        if self.get_property(dataset, "mounted") == "yes":
            return
        self._change([self.zfs_bin, "mount", dataset], dataset)
