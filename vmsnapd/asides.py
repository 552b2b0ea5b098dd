"""What an in-place restore set aside: the record in `state_dir/restore-asides.json` and the zfs steps of one
swap. Below the restore action: `status` lists what is kept aside, `prune` keeps the RAM dumps of its snapshots,
`restore` writes it (docs/cli.md, "restore").
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from vmsnapd.files import ensure_private_directory, write_file_atomically
from vmsnapd.zfs import Zfs, ZfsListing

ASIDE_RECORDS = "restore-asides.json"


class RestoreFailed(Exception):
    pass


class Verb(str, Enum):
    RENAME = "rename"
    SET_MOUNTPOINT = "set-mountpoint"
    CLONE = "clone"
    PROMOTE = "promote"
    DESTROY_TREE = "destroy-tree"


class ZfsStep(BaseModel):
    verb: Verb
    dataset: str
    arg: str = ""  # rename: the new name; set-mountpoint: the path; clone: the source `ds@snap`
    mountpoint: str | None = None  # clone: the mountpoint to give the clone (when the original set its own)

    def text(self) -> str:
        return {
            Verb.RENAME: f"rename {self.dataset} to {self.arg}",
            Verb.SET_MOUNTPOINT: f"set mountpoint={self.arg} on {self.dataset}",
            Verb.CLONE: f"clone {self.arg} as {self.dataset}",
            Verb.PROMOTE: f"promote {self.dataset}",
            Verb.DESTROY_TREE: f"destroy {self.dataset} with its snapshots (zfs destroy -r)",
        }[self.verb]


class AsideEntry(BaseModel):
    """One dataset of a VM swapped by an in-place restore."""

    dataset: str  # the original name, which the restored clone now carries
    aside: str  # where the replaced dataset (and its newer snapshots) lives now
    snapshot: str  # the snapshot the clone was made from (short name)
    mountpoint_local: str | None = None  # the dataset's own `mountpoint` when set locally; None: inherited
    aside_mountpoint: str | None = None  # the mountpoint given to the aside when the original set its own
    children: list[str] = Field(default_factory=list)  # leaf names of child datasets, moved back under the clone
    # The dataset and descendants that were mounted when the restore was planned (full names): an undo mounts
    # them again, also after a restore killed between `zfs unmount` and `zfs rename`. Records of older versions
    # have none, and an undo then mounts nothing beyond what its own steps unmounted.
    mounted: list[str] = Field(default_factory=list)

    def forward_steps(self) -> list[ZfsStep]:
        steps = [ZfsStep(verb=Verb.RENAME, dataset=self.dataset, arg=self.aside)]
        if self.aside_mountpoint:
            steps.append(ZfsStep(verb=Verb.SET_MOUNTPOINT, dataset=self.aside, arg=self.aside_mountpoint))
        steps.append(ZfsStep(verb=Verb.CLONE, dataset=self.dataset, arg=f"{self.aside}@{self.snapshot}",
                             mountpoint=self.mountpoint_local))
        steps.append(ZfsStep(verb=Verb.PROMOTE, dataset=self.dataset))
        steps += [ZfsStep(verb=Verb.RENAME, dataset=f"{self.aside}/{c}", arg=f"{self.dataset}/{c}")
                  for c in self.children]
        return steps


class RestoreRecord(BaseModel):
    """What an in-place restore set aside; written before its first change, `complete` once all datasets are
    swapped."""

    domain: str
    snapshot: str
    at: datetime
    was_running: bool
    complete: bool = False
    entries: list[AsideEntry]


class AsideRecords(BaseModel):
    version: int = 1
    records: dict[str, RestoreRecord] = Field(default_factory=dict)  # domain → its kept-aside state


def load_records(state_dir: Path) -> AsideRecords:
    path = state_dir / ASIDE_RECORDS
    try:
        return AsideRecords.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return AsideRecords()
    except (OSError, ValueError, ValidationError) as exc:
        raise RestoreFailed(f"{path} is unreadable ({str(exc).splitlines()[0]}): it says which datasets a restore "
                            "set aside; repair or move it") from exc


def save_records(state_dir: Path, records: AsideRecords) -> None:
    ensure_private_directory(state_dir)
    write_file_atomically(state_dir / ASIDE_RECORDS, records.model_dump_json(indent=1).encode())


def kept_aside_lines(state_dir: Path) -> list[str]:
    """One line per VM whose replaced state a restore keeps aside, with the commands for it (for `status`)."""
    try:
        records = load_records(state_dir).records
    except RestoreFailed as exc:
        return [str(exc)]
    lines = []
    for domain, record in records.items():
        what = "restore INTERRUPTED" if not record.complete else f"restored to {record.snapshot}"
        lines.append(f"{domain}: {what} at {record.at:%Y-%m-%d %H:%M:%S}; kept aside: "
                     f"{', '.join(e.aside for e in record.entries)} — undo: `vmsnapd restore --undo {domain} --yes`"
                     f", drop: `vmsnapd restore --drop-aside {domain} --yes`")
    return lines


def kept_aside_snapshots(state_dir: Path, zfs: Zfs, listing: ZfsListing) -> set[tuple[str, str]]:
    """(original dataset, snapshot) of every snapshot a restore keeps aside: their RAM dumps must stay.
    Raises RestoreFailed (unreadable record) or ZfsError: the caller then sweeps nothing."""
    records = load_records(state_dir).records
    entries = [e for record in records.values() for e in record.entries]
    unlisted = [e.aside for e in entries if e.aside not in listing.datasets]
    extra = zfs.list_tree(unlisted) if unlisted else ZfsListing()
    kept = set()
    for entry in entries:
        for snap in listing.snapshots_of(entry.aside) + extra.snapshots_of(entry.aside):
            kept.add((entry.dataset, snap.name))
    return kept
