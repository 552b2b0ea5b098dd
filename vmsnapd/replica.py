"""Pure rules for RAM dumps that travel with `zfs send` (docs/replication.md): no zfs, no libvirt here.

- Layout below `[daemon] ram_dataset`: one filesystem per dump, `<ram_dataset>/<key>_<stamp>`, holding the
  dump and its manifest and snapshotted with the cycle's names once both are written. `<key>` is the domain
  name when it is a plain dataset component (letters, digits, `_ . : -`, at most 64 characters, starting with
  a letter or digit), else `_` and 16 hex digits of its SHA-256 (the manifest inside keeps the full name).
- The source → replica dataset map: a `[datasets."backup/VM"]` table with `source = "rpool/VM"` says that
  `rpool/VM/x` (named in a manifest written on the source host) is `backup/VM/x` here. Longest prefix wins.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence

from vmsnapd.names import STAMP_PATTERN, validate_dataset_name

DUMP_DATASET = re.compile(rf"(?P<key>.+)_(?P<stamp>{STAMP_PATTERN})")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


def dump_key(domain: str) -> str:
    """The part of a dump dataset's name that stands for `domain` (injective: hashed keys start with `_`)."""
    if _PLAIN_KEY.fullmatch(domain):
        return domain
    return "_" + hashlib.sha256(domain.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def dump_dataset(ram_dataset: str, domain: str, stamp: str) -> str:
    """`<ram_dataset>/<key>_<stamp>`, validated (InvalidName when too long for ZFS)."""
    return validate_dataset_name(f"{ram_dataset}/{dump_key(domain)}_{stamp}")


def parse_dump_dataset(ram_dataset: str, dataset: str) -> tuple[str, str] | None:
    """(key, stamp) of a direct child of `ram_dataset` named like a dump dataset, else None (never ours)."""
    parent, _, leaf = dataset.rpartition("/")
    if parent != ram_dataset:
        return None
    match = DUMP_DATASET.fullmatch(leaf)
    return (match["key"], match["stamp"]) if match else None


def nesting_problem(ram_dataset: str, managed: Iterable[str]) -> str | None:
    """ram_dataset must neither lie in nor hold a configured dataset table: vmsnapd would otherwise snapshot
    and prune the dump filesystems as VM datasets (or the VMs' datasets as dumps)."""
    for name in sorted(managed):
        if name == ram_dataset or ram_dataset.startswith(name + "/"):
            return f"lies inside the configured dataset {name!r}"
        if name.startswith(ram_dataset + "/"):
            return f"holds the configured dataset {name!r}"
    return None


def source_prefixes(sources: Mapping[str, str | None]) -> list[tuple[str, str]]:
    """(source, local) pairs from the tables' `source` keys ({table: source}), longest source first."""
    pairs = [(source, table) for table, source in sources.items() if source]
    return sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)


def to_local(dataset: str, prefixes: Sequence[tuple[str, str]]) -> str:
    """The local name of a dataset a manifest names: mapped by the longest matching `source`, else itself."""
    for source, local in prefixes:
        if dataset == source:
            return local
        if dataset.startswith(source + "/"):
            return local + dataset[len(source):]
    return dataset

