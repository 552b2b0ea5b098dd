"""Hypervisor connections for the VM cycles of one pass that run side by side: one connection per cycle under way.

libvirtd serves at most `max_client_requests` calls of one client connection at once (5 by default) and stops
reading that connection's further calls until one of them returns. A live RAM capture (`snapshotCreateXML`) or a
pivot keeps its call open for a second or more, so eight cycles sharing one connection waited in line for each
other's calls — even for a domain lookup — and their cycles finished in clusters about a capture apart
(docs/benchmarks.md, "8 running VMs"). So every cycle under way gets a connection of its own: the pass's own
connection (used for planning, idle while the cycles run) first, further ones opened as more cycles run at once
and reused by the next cycles; the extra ones are closed when the cycles are done. At most as many connections as
cycles run at once (`max_parallel`, plus the members of a VM group) are open.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from vmsnapd.ports import HypervisorPort

log = logging.getLogger(__name__)


class Connections:
    """A pool of hypervisor connections, lent to one cycle at a time (`lease`), closed by `close` (all but
    `first`, which its owner closes)."""

    def __init__(self, first: HypervisorPort, open_one: Callable[[], HypervisorPort]):
        self.first = first
        self._open_one = open_one
        self._idle: list[HypervisorPort] = [first]
        self._opened: list[HypervisorPort] = []
        self._lock = threading.Lock()

    @contextmanager
    def lease(self) -> Iterator[HypervisorPort]:
        """A connection no other cycle uses until this one gives it back; when no further one can be made, the
        pass's own, shared (as before there were several: slower, never a failed cycle)."""
        with self._lock:
            hypervisor = self._idle.pop() if self._idle else None
        if hypervisor is None:
            try:
                hypervisor = self._open_one()  # connected at once (Context.open_hypervisor): a refusal is here
            except Exception as exc:  # noqa: BLE001 — one cycle's connection must not stop the others
                log.warning("cannot open another connection to the hypervisor (%s); sharing the pass's", exc)
                yield self.first
                return
            with self._lock:
                self._opened.append(hypervisor)
        try:
            yield hypervisor
        finally:
            with self._lock:
                self._idle.append(hypervisor)

    @property
    def opened(self) -> int:
        """How many connections were opened besides `first`."""
        with self._lock:
            return len(self._opened)

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
            self._idle = [self.first]
        for hypervisor in opened:
            if hypervisor is not self.first:  # a test's fake may hand out the same object
                hypervisor.close()
