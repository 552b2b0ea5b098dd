"""Logging: to the journal with native fields when we run under systemd, else to stderr.

Where lines go (`VMSNAPD_LOG_TARGET` = `auto` (default) | `journal` | `stderr` overrides):

- auto: the journal when a journald listens on its socket *and* our stderr is the journal stream systemd gave us
  (`JOURNAL_STREAM` names stderr's device:inode) — the rule systemd's own tools follow (`SYSTEMD_LOG_TARGET`
  auto). A service's lines then carry fields; a terminal, cron or a test capturing stderr keeps getting text.
- journal: the native protocol (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/): one datagram per record to
  /run/systemd/journal/socket, `KEY=value` lines, values with a newline in the binary form (name, newline,
  64-bit little-endian length, bytes, newline); a record too big for a datagram goes in a sealed memfd
  whose descriptor is passed with SCM_RIGHTS, as sd_journal_send() does. If sending fails the line is
  written to stderr instead (never lost, never an exception in the caller).
- stderr: with syslog priority prefixes (`<3>` …) when systemd reads our stderr (journald parses them),
  else `HH:MM:SS LEVEL logger: message` (with --debug `HH:MM:SS.mmm LEVEL [thread] logger: message`).

Fields: `MESSAGE`, `PRIORITY`, `SYSLOG_IDENTIFIER=vmsnapd`, `CODE_FILE`/`CODE_LINE`/`CODE_FUNC`,
`VMSNAPD_LOGGER`, and `VMSNAPD_DATASET`, `VMSNAPD_DOMAIN`, `VMSNAPD_SNAPSHOT`, `VMSNAPD_CYCLE`,
`VMSNAPD_PAUSE_MS` where known. Known means: set for a block of work with `with log_fields(dataset=…):`
(a context variable, so every line logged inside a cycle — hooks, libvirt, RAM store — carries them) or
for one line with `extra=fields(pause_ms=…)`.

Levels: NOTICE (25, syslog 5) sits between INFO and WARNING for normal life worth keeping (start, stop,
reload, a snapshot taken, snapshots destroyed); the daemon logs at NOTICE and above by default, so the
unit needs no `--verbose`; INFO (`-v`) adds a pass with nothing due, hook output and each step.
"""

from __future__ import annotations

import array
import contextlib
import contextvars
import errno
import fcntl
import logging
import os
import socket
import struct
import sys
import threading
from collections.abc import Hashable, Iterable, Iterator, Mapping
from types import MappingProxyType

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "vmsnapd"
FIELD_NAMES = ("dataset", "domain", "snapshot", "cycle", "pause_ms")
_EXTRA_KEY = "vmsnapd_fields"

_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    NOTICE: 5,
    logging.INFO: 6,
    logging.DEBUG: 7,
}

_NO_FIELDS: Mapping[str, str] = MappingProxyType({})
_context_fields: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("vmsnapd_log_fields",
                                                                                      default=_NO_FIELDS)


_said: set[Hashable] = set()
_said_lock = threading.Lock()


def first_time(key: Hashable) -> bool:
    """True the first time this process asks about `key`, False after: for a warning logged once per process,
    however many passes the daemon makes (each pass builds its objects anew)."""
    with _said_lock:
        if key in _said:
            return False
        _said.add(key)
        return True


def dry_run_prefix(dry_run: bool) -> str:
    """What starts every log line of a dry run ("dry-run: would …"), so a preview never reads as done."""
    return "dry-run: " if dry_run else ""


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level (levels between two known ones take the more severe)."""
    for level in sorted(_SYSLOG_PRIORITY, reverse=True):
        if levelno >= level:
            return _SYSLOG_PRIORITY[level]
    return 7


def _clean(values: Mapping[str, object]) -> dict[str, tuple[str, ...]]:
    """Field name → its values: a list (the datasets of a VM, the names of a cycle) becomes one journal field
    per item, so `journalctl VMSNAPD_DATASET=tank/VM/b` matches a cycle of tank/VM/a and tank/VM/b."""
    unknown = set(values) - set(FIELD_NAMES)
    if unknown:
        raise TypeError(f"unknown log field(s): {', '.join(sorted(unknown))}")
    cleaned = {}
    for key, value in values.items():
        items = tuple(str(v) for v in (value if isinstance(value, (list, tuple)) else [value])
                      if v is not None and v != "")
        if items:
            cleaned[key] = items
    return cleaned


@contextlib.contextmanager
def log_fields(**values: object) -> Iterator[None]:
    """Every line logged in this block (this thread) carries these fields; None/empty values are left out."""
    token = _context_fields.set({**_context_fields.get(), **_clean(values)})
    try:
        yield
    finally:
        _context_fields.reset(token)


def fields(**values: object) -> dict[str, dict[str, tuple[str, ...]]]:
    """`extra=` for one log call: `log.info("…", extra=fields(pause_ms=85))`."""
    return {_EXTRA_KEY: _clean(values)}


def record_fields(record: logging.LogRecord) -> dict[str, tuple[str, ...]]:
    """The vmsnapd fields of a record: the block's, then the call's own."""
    return {**_context_fields.get(), **getattr(record, _EXTRA_KEY, {})}


# -- the native journal protocol ----------------------------------------------------------------------------


def encode_field(name: str, value: str | bytes) -> bytes:
    data = value.encode("utf-8", "replace") if isinstance(value, str) else value
    key = name.encode("ascii")
    if b"\n" in data:
        return key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return key + b"=" + data + b"\n"


def encode_entry(entry: Mapping[str, str | bytes] | Iterable[tuple[str, str | bytes]]) -> bytes:
    """A journal entry: a mapping, or (name, value) pairs where a name may repeat (a field with several values)."""
    pairs = entry.items() if isinstance(entry, Mapping) else entry
    return b"".join(encode_field(k, v) for k, v in pairs)


class JournalHandler(logging.Handler):
    """Sends each record to journald with native fields; falls back to stderr when the journal refuses."""

    def __init__(self, address: str = JOURNAL_SOCKET, identifier: str = IDENTIFIER):
        super().__init__()
        self.address = address
        self.identifier = identifier
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.fallback = logging.StreamHandler(sys.stderr)
        self.fallback.setFormatter(SyslogPrefixFormatter("%(name)s: %(message)s"))

    def entry(self, record: logging.LogRecord) -> list[tuple[str, str]]:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        entry = {
            "MESSAGE": message,
            "PRIORITY": str(syslog_priority(record.levelno)),
            "SYSLOG_IDENTIFIER": self.identifier,
            "CODE_FILE": record.pathname,
            "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName,
            "VMSNAPD_LOGGER": record.name,
        }
        if record.threadName and record.threadName != "MainThread":
            entry["VMSNAPD_THREAD"] = record.threadName
        pairs = list(entry.items())
        for name, values in record_fields(record).items():
            pairs += [(f"VMSNAPD_{name.upper()}", value) for value in values]
        return pairs

    def formatException(self, exc_info) -> str:  # logging's name
        return logging.Formatter().formatException(exc_info)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.send(encode_entry(self.entry(record)))
        except OSError:
            self.fallback.handle(record)
        except Exception:  # noqa: BLE001 — logging must never raise into the caller
            self.handleError(record)

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendto(data, self.address)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):  # too big for a datagram
                raise
            self._send_memfd(data)

    def _send_memfd(self, data: bytes) -> None:
        fd = os.memfd_create("vmsnapd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            self.sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))], 0, self.address)
        finally:
            os.close(fd)

    def close(self) -> None:
        self.sock.close()
        super().close()


# -- stderr -------------------------------------------------------------------------------------------------


def under_systemd() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


def stderr_is_journal() -> bool:
    """True when systemd connected our stderr to the journal (JOURNAL_STREAM=device:inode of it)."""
    try:
        device, inode = (int(x) for x in os.environ.get("JOURNAL_STREAM", "").split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


class SyslogPrefixFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = syslog_priority(record.levelno)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def journal_listening(address: str = JOURNAL_SOCKET) -> bool:
    """A journald listens on the socket (the file alone outlives a stopped journald)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(address)
        except OSError:
            return False
    return True


def log_target() -> str:
    """"journal" or "stderr", following VMSNAPD_LOG_TARGET (auto|journal|stderr; see the module doc)."""
    wanted = os.environ.get("VMSNAPD_LOG_TARGET", "auto").strip().lower()
    socket_there = journal_listening()
    if wanted == "journal" and socket_there:
        return "journal"
    if wanted == "auto" and socket_there and stderr_is_journal():
        return "journal"
    return "stderr"


def _text_formatter(level: int) -> logging.Formatter:
    """`HH:MM:SS LEVEL logger: message`; with --debug also milliseconds and the thread (`cycle_3`: the VM cycles
    of one pass run side by side, and a command's argv line must be told apart from another cycle's), so where
    a pass's time goes can be read off the lines (docs/benchmarks.md, "8 running VMs")."""
    if level <= logging.DEBUG:
        return logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s [%(threadName)s] %(name)s: %(message)s",
                                 "%H:%M:%S")
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")


def setup_logging(level: int) -> None:
    if log_target() == "journal":
        handler: logging.Handler = JournalHandler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        if under_systemd():
            handler.setFormatter(SyslogPrefixFormatter("%(name)s: %(message)s"))
        else:
            handler.setFormatter(_text_formatter(level))
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # APScheduler says "Running job …" every minute at INFO: only worth seeing when debugging.
    logging.getLogger("apscheduler").setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
