"""The qemu-img adapter: what vmsnapd asks of overlay files no QEMU has open, through vmsnapd.runner.

`create_overlay` makes a cycle's overlay before the guest is touched (libvirt then only opens it: no
`blockdev-create` job while the guest is stopped, docs/how-it-works.md "Pre-created overlays").

`parse_backing` and `parse_backing_chain` are pure (property-tested); `QemuImg` runs `qemu-img` (argv, timeout)
and turns its failures into the hypervisor's typed errors, since the callers treat an overlay file like any other
disk of a domain. `backing_chain` reads any disk's chain (vmsnapd.backing: files a restore point depends on).
"""

from __future__ import annotations

import json
import logging
import os
import re

from vmsnapd.files import create_private_file
from vmsnapd.hvtypes import BlockJobFailed, HypervisorError, OverlayPathTaken
from vmsnapd.runner import CommandError, Runner

log = logging.getLogger(__name__)

MAX_CHAIN = 32  # backing files followed one by one before giving up (a chain looping back on itself)


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


def _usable_path(value: object) -> bool:
    return isinstance(value, str) and value.startswith("/") and "\0" not in value and len(value) < 4096


def parse_backing_chain(qemu_img_json: str, image_path: str) -> list[str]:
    """The backing files of `image_path`, nearest first, from `qemu-img info --backing-chain --output=json` (a
    list of one object per image of the chain, the image itself first; without --backing-chain one object: its
    backing file only); [] for an image without one. HypervisorError on anything else."""
    try:
        chain = json.loads(qemu_img_json)
    except (ValueError, RecursionError) as exc:
        raise HypervisorError(f"{image_path}: qemu-img info printed no readable JSON ({exc})") from None
    if isinstance(chain, dict):
        chain = [chain]
    if not isinstance(chain, list) or not chain or not all(isinstance(image, dict) for image in chain):
        raise HypervisorError(f"{image_path}: qemu-img info --backing-chain printed no list of images")
    backing = []
    for image in chain:
        base = image.get("full-backing-filename") or image.get("backing-filename")
        if not base:
            break
        if not _usable_path(base):
            raise HypervisorError(f"{image_path}: qemu-img info gives an unusable backing file {base!r}")
        backing.append(base)
    return backing


class QemuImg:
    def __init__(self, runner: Runner, *, binary: str = "qemu-img", dry_run: bool = False):
        self.runner = runner
        self.binary = binary
        self.dry_run = dry_run

    def create_overlay(self, overlay_path: str, backing: str, backing_format: str) -> None:
        """A new qcow2 overlay on `backing` (recorded with its format in the header, as libvirt would write it;
        the size is the backing file's): the file is created first, 0600 and without following a link
        (O_EXCL|O_NOFOLLOW in the checked folder), then qemu-img writes the image into it. HypervisorError on
        any failure; a file made before the failure stays for the caller, who recorded it, to delete."""
        argv = [self.binary, "create", "-q", "-f", "qcow2", "-b", backing, "-F", backing_format, overlay_path]
        if self.dry_run:
            log.info("dry-run: would create overlay %s on %s (%s)", overlay_path, backing, " ".join(argv))
            return
        try:
            os.close(create_private_file(overlay_path))
        except FileExistsError as exc:  # O_EXCL: a file or a link appeared since the cycle checked
            raise OverlayPathTaken(f"cannot create overlay {overlay_path}: it appeared meanwhile (not this cycle's "
                                   "overlay, left alone); no snapshot taken") from exc
        except OSError as exc:
            raise HypervisorError(f"cannot create overlay {overlay_path}: {exc}") from exc
        try:
            self.runner.run(argv, timeout=60)
        except CommandError as exc:
            raise HypervisorError(f"cannot create overlay {overlay_path} on {backing}: {exc}") from exc

    def backing_of(self, overlay_path: str) -> tuple[str, str]:
        """(backing file, its format) recorded in a qcow2 overlay's header."""
        try:
            out = self.runner.run([self.binary, "info", "-U", "--output=json", overlay_path], timeout=60).stdout
        except CommandError as exc:
            raise HypervisorError(f"cannot read overlay {overlay_path}: {exc}") from exc
        return parse_backing(out, overlay_path)

    def backing_chain(self, image_path: str) -> list[str]:
        """Every backing file under a disk image, nearest first (`qemu-img info --backing-chain`, `-U`: the image
        may be open in a running QEMU). qemu-img refuses the whole chain when a file of it is missing: then the
        chain is walked one image at a time and ends with the missing file (the caller finds it is not there)."""
        try:
            out = self._info(image_path, "--backing-chain")
        except CommandError as exc:
            return self._walk(image_path, exc)
        return parse_backing_chain(out, image_path)

    def _info(self, image_path: str, *options: str) -> str:
        return self.runner.run([self.binary, "info", *options, "-U", "--output=json", "--", image_path],
                               timeout=60).stdout

    def _walk(self, image_path: str, first: CommandError) -> list[str]:
        chain: list[str] = []
        path = image_path
        while len(chain) < MAX_CHAIN:
            try:
                out = self._info(path)
            except CommandError as exc:
                if chain and not os.path.lexists(path):
                    return chain
                raise HypervisorError(f"cannot read the backing chain of {image_path}: {first}") from exc
            nearest = parse_backing_chain(out, path)[:1]
            if not nearest:
                return chain
            chain += nearest
            path = nearest[0]
        raise HypervisorError(f"the backing chain of {image_path} is longer than {MAX_CHAIN} files (a loop?)")

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
