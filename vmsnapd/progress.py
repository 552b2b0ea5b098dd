"""Progress on a terminal for the long libvirt jobs of a command: RAM dumps (save/snapshot jobs), block commits
and restores, read from libvirt's own job information while the command runs.

Only when stderr is a terminal; one line, rewritten in place, cleared at the end. A read-only libvirt
connection of its own, polled once a second from a daemon thread: the command's code is not touched and
a failure here (no libvirt, a domain that went away) only means no progress line.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator

POLL_S = 1.0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} TiB"  # not reached


def describe_job(domain: str, stats: dict) -> str | None:
    """One line from `virDomainGetJobStats` (a save, snapshot-with-memory or restore job); None if no job."""
    if not stats or stats.get("type", 0) == 0:  # VIR_DOMAIN_JOB_NONE
        return None
    done = stats.get("memory_processed", stats.get("data_processed", 0))
    total = stats.get("memory_total", stats.get("data_total", 0))
    rate = stats.get("memory_bps", 0)
    text = f"{domain}: RAM {_size(done)}"
    if total:
        text += f" of {_size(total)} ({100 * done / total:.0f}%)"
    if rate:
        text += f", {_size(rate)}/s"
    return text


def describe_block_job(domain: str, target: str, info: dict) -> str | None:
    """One line from `virDomainGetBlockJobInfo` (a blockcommit); None if no job on that disk."""
    if not info or not info.get("end"):
        return None
    done = f"{_size(info['cur'])} of {_size(info['end'])} ({100 * info['cur'] / info['end']:.0f}%)"
    return f"{domain}: commit {target} {done}"


class _Poller(threading.Thread):
    def __init__(self, uri: str, domains: Iterable[str], out) -> None:
        super().__init__(name="progress", daemon=True)
        self.uri, self.domains, self.out = uri, list(domains), out
        self.stop = threading.Event()
        self.shown = False

    def run(self) -> None:
        try:
            import libvirt

            libvirt.registerErrorHandler(lambda *_: None, None)
            conn = libvirt.openReadOnly(self.uri)
        except Exception:  # noqa: BLE001 — no progress line, nothing else
            return
        try:
            while not self.stop.wait(POLL_S):
                line = "; ".join(filter(None, (self._one(conn, d) for d in self.domains)))
                if line or self.shown:
                    self.out.write("\r" + line[:200] + "\x1b[K")
                    self.out.flush()
                    self.shown = bool(line)
        finally:
            conn.close()

    @staticmethod
    def _one(conn, name: str) -> str | None:
        try:
            dom = conn.lookupByName(name)
            line = describe_job(name, dom.jobStats())
            if line:
                return line
            targets = [t.get("dev") for t in ET.fromstring(dom.XMLDesc(0)).findall("./devices/disk/target")]
            return "; ".join(filter(None, (describe_block_job(name, t, dom.blockJobInfo(t, 0)) for t in targets)))
        except Exception:  # noqa: BLE001 — a domain that is not (yet, any more) there
            return None


@contextlib.contextmanager
def progress_on_tty(uri: str, domains: Iterable[str], out=None) -> Iterator[None]:
    out = out or sys.stderr
    domains = [d for d in domains if d]
    if not domains or not out.isatty():
        yield
        return
    poller = _Poller(uri, domains, out)
    poller.start()
    try:
        yield
    finally:
        poller.stop.set()
        poller.join(timeout=5)
        if poller.shown:
            out.write("\r\x1b[K")
            out.flush()
