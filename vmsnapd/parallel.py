"""Bounded, ordered fan-out of independent per-dataset work (prune's destroys, snapshots of VM-less datasets).

The work items must not share state beyond what is safe under the GIL; every result comes back in the order of
the items, and each item runs in a copy of the caller's logging context (vmsnapd.logsetup.log_fields).
"""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], jobs: int, name: str = "work") -> list[R]:
    """`[fn(item) for item in items]`, at most `jobs` at once; serial (no thread) when jobs <= 1 or one item.

    An exception of one item is raised once every item has run: the others are never cut short by it."""
    items = list(items)
    if jobs <= 1 or len(items) <= 1:
        return [fn(item) for item in items]

    def run(item: T, context: contextvars.Context) -> R:
        return context.run(fn, item)

    with ThreadPoolExecutor(max_workers=min(jobs, len(items)), thread_name_prefix=name) as pool:
        futures = [pool.submit(run, item, contextvars.copy_context()) for item in items]
    return [f.result() for f in futures]
