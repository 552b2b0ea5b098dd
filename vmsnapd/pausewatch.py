"""How long a guest stood still: SUSPENDED/RESUMED lifecycle events collected per domain. No libvirt here.

The libvirt adapter feeds events in (`PauseWatchers.record`, from libvirt's event-loop thread); a cycle reads
the result from the `PauseWatch` it opened around its freeze. A fake hypervisor can feed the same object.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum


class PauseEvent(StrEnum):
    SUSPENDED = "suspended"
    RESUMED = "resumed"


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
            if kind == PauseEvent.SUSPENDED and since is None:
                since = stamp
            elif kind == PauseEvent.RESUMED and since is not None:
                total += stamp - since
                since = None
        if since is not None:  # still paused (pause method before resume, or a paused VM)
            total += time.monotonic() - since
        return int(total * 1000) if self.events else None


class PauseWatchers:
    """The open watches by domain; events arrive on another thread than the one opening and closing watches."""

    def __init__(self, settle_s: float = 0.05):
        self.settle_s = settle_s
        self._watches: dict[str, list[PauseWatch]] = {}
        self._lock = threading.Lock()

    def record(self, domain: str, kind: PauseEvent) -> None:
        with self._lock:
            watches = list(self._watches.get(domain, ()))
        for watch in watches:
            watch.record(kind)

    @contextmanager
    def watch(self, domain: str) -> Iterator[PauseWatch]:
        watch = PauseWatch(domain)
        with self._lock:
            self._watches.setdefault(domain, []).append(watch)
        try:
            yield watch
        finally:
            # Events are delivered asynchronously by the loop thread; give the last one a moment.
            time.sleep(self.settle_s)
            with self._lock:
                self._watches[domain].remove(watch)
                if not self._watches[domain]:
                    del self._watches[domain]
