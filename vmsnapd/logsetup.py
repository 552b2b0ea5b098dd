"""Logging to stderr; with syslog priority prefixes (`<3>` …) when systemd reads our stderr.

journald parses a leading `<N>` on each line as the priority (SyslogLevelPrefix=yes by default), so
`journalctl -u vmsnapd -p warning` works without a journal library.
"""

from __future__ import annotations

import logging
import os
import sys

_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def under_systemd() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


class SyslogPrefixFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def setup_logging(level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if under_systemd():
        handler.setFormatter(SyslogPrefixFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # APScheduler says "Running job …" every minute at INFO: only worth seeing when debugging.
    logging.getLogger("apscheduler").setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
