"""The qemu-img adapter: what vmsnapd asks of overlay files no QEMU has open, through vmsnapd.runner.

`parse_backing` is pure (property-tested); `QemuImg` runs `qemu-img` (argv, timeout) and turns its failures
into the hypervisor's typed errors, since the callers treat an overlay file like any other disk of a domain.
"""

from __future__ import annotations

import json
import logging
import re

from vmsnapd.hvtypes import BlockJobFailed, HypervisorError
from vmsnapd.runner import CommandError, Runner

log = logging.getLogger(__name__)


def parse_backing(qemu_img_json: str, overlay_path: str) -> tuple[str, str]:
    """(backing file, its format) from `qemu-img info --output=json`; HypervisorError on anything else."""
    try:
        info = json.loads(qemu_img_json)
    except (ValueError, RecursionError) as exc:
        raise HypervisorError(f"{overlay_path}: qemu-img info printed no readable JSON ({exc})") from None
    if not isinstance(info, dict):
        raise HypervisorError(f"{overlay_path}: qemu-img info printed {type(info).__name__}, not an object")
    base = info.get("full-backing-filename") or info.get("backing-filename")
    fmt = info.get("backing-filename-format") or "raw"
    if not base:
        raise HypervisorError(f"{overlay_path} has no backing file: not an overlay vmsnapd can commit")
    if (not isinstance(base, str) or "\0" in base or not base.startswith("/")
            or not isinstance(fmt, str) or not re.fullmatch(r"[a-z0-9_-]{1,32}", fmt)):
        raise HypervisorError(f"{overlay_path}: qemu-img info gives an unusable backing file {base!r} ({fmt!r})")
    return base, fmt


class QemuImg:
    def __init__(self, runner: Runner, *, binary: str = "qemu-img", dry_run: bool = False):
        self.runner = runner
        self.binary = binary
        self.dry_run = dry_run

    def backing_of(self, overlay_path: str) -> tuple[str, str]:
        """(backing file, its format) recorded in a qcow2 overlay's header."""
        try:
            out = self.runner.run([self.binary, "info", "-U", "--output=json", overlay_path], timeout=60).stdout
        except CommandError as exc:
            raise HypervisorError(f"cannot read overlay {overlay_path}: {exc}") from exc
        return parse_backing(out, overlay_path)

    def commit(self, overlay_path: str, timeout_s: float = 3600.0) -> str:
        """Merge an overlay no QEMU has open into its backing file (`qemu-img commit`); returns the base."""
        base, _fmt = self.backing_of(overlay_path)
        if self.dry_run:
            log.info("dry-run: would qemu-img commit %s into %s", overlay_path, base)
            return base
        try:
            self.runner.run([self.binary, "commit", "-q", "-d", "-f", "qcow2", overlay_path], timeout=timeout_s)
        except CommandError as exc:
            raise BlockJobFailed(f"qemu-img commit {overlay_path}: {exc}") from exc
        return base
