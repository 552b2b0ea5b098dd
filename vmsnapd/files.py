"""Root-safe files: the folders vmsnapd writes in, and files created there without following a link.

vmsnapd runs as root. A folder that another user owns, or that group or others may write, lets that
user plant a symbolic link (or a file of their own) exactly where root is about to write: root would
then overwrite, chmod or disclose a file of the attacker's choosing. So:

- a folder vmsnapd writes in is created 0700 (overlay_dir 0711: QEMU must reach its overlays) and
  must be a real directory owned by root (the effective user), as must every parent up to `/`;
  none of them may be writable by group or others, except a sticky parent such as `/tmp`.
  Anything else raises `UnsafePath` (an OSError) naming the folder and the reason — it is not used;
- a parent may be a symbolic link only when root owns the link and everything it points to is safe;
  the folder itself may not be a link;
- a file is written through a hidden temporary sibling created with O_EXCL|O_NOFOLLOW inside the
  opened folder, fsynced, renamed over the final name (a rename replaces a link, never follows it),
  and the folder fsynced: a crash leaves the old or the new content, never a mix.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"
COPY_CHUNK = 4 * 1024 * 1024
_OTHERS_MAY_WRITE = stat.S_IWGRP | stat.S_IWOTH


class UnsafePath(PermissionError):
    """A folder or file vmsnapd would write is not safe for root: someone else owns it or may write it,
    or a symbolic link sits where vmsnapd writes."""


def _owner_name(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, ImportError):
        return f"uid {uid}"


def _trusted(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _check_directory_stat(path: Path, st: os.stat_result, *, is_leaf: bool) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{path} is not a directory")
    if not _trusted(st.st_uid):
        raise UnsafePath(f"{path} is owned by {_owner_name(st.st_uid)}, not root: that user could make root "
                         "write anywhere through it; use a folder owned by root")
    sticky_parent = not is_leaf and st.st_mode & stat.S_ISVTX
    if st.st_mode & _OTHERS_MAY_WRITE and not sticky_parent:
        raise UnsafePath(f"{path} may be written by group or others (mode {stat.S_IMODE(st.st_mode):04o}): "
                         f"`chmod go-w {path}` or use another folder")


def check_folder(path: Path) -> None:
    """Raise UnsafePath (or FileNotFoundError) unless `path` is a directory vmsnapd may write in: see the module."""
    _check_chain(Path(os.path.abspath(path)), leaf_may_be_link=False, depth=0)


def _check_chain(path: Path, *, leaf_may_be_link: bool, depth: int, is_leaf: bool = True) -> None:
    """Check `path` and every parent up to `/`; `is_leaf`: `path` is the folder written in (else a parent)."""
    if depth > 40:
        raise UnsafePath(f"{path}: too many levels of symbolic links")
    current = path
    while True:
        st = os.lstat(current)
        if stat.S_ISLNK(st.st_mode):
            if is_leaf and not leaf_may_be_link:
                raise UnsafePath(f"{current} is a symbolic link: vmsnapd does not write through links")
            if not _trusted(st.st_uid):
                raise UnsafePath(f"{current} is a symbolic link owned by {_owner_name(st.st_uid)}, not root")
            _check_chain(Path(os.path.realpath(current)), leaf_may_be_link=False, depth=depth + 1, is_leaf=is_leaf)
        else:
            _check_directory_stat(current, st, is_leaf=is_leaf)
        if current.parent == current:
            return
        current = current.parent
        is_leaf = False


def check_folder_to_be(path: Path) -> None:
    """What `ensure_folder` would refuse, without creating anything: UnsafePath (an OSError) unless `path` is a
    folder vmsnapd may write in or, when missing, could be created as one (`config check` says it in advance)."""
    path = Path(os.path.abspath(path))
    existing = path
    while not os.path.lexists(existing):
        existing = existing.parent
    _check_chain(existing, leaf_may_be_link=existing != path, depth=0, is_leaf=existing == path)


def ensure_folder(path: Path, mode: int = 0o700, *, set_mode: bool = True) -> None:
    """Create `path` (and missing parents) with `mode`, or check the existing one; UnsafePath if not safe.

    `set_mode`: also give an existing `path` exactly `mode` (mkdir's mode is filtered by the umask)."""
    path = Path(os.path.abspath(path))
    missing: list[Path] = []
    existing = path
    while not os.path.lexists(existing):
        missing.append(existing)
        existing = existing.parent
    _check_chain(existing, leaf_may_be_link=existing != path, depth=0, is_leaf=existing == path)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, mode)
        except FileExistsError:
            pass  # made meanwhile: the check below decides whether it is usable
        _check_directory_stat(folder, os.lstat(folder), is_leaf=folder == path)
        if folder != path or set_mode:
            os.chmod(folder, mode, follow_symlinks=False)
    if not missing and set_mode:
        os.chmod(path, mode, follow_symlinks=False)


def ensure_private_directory(directory: Path) -> None:
    """A folder only root may enter (0700), created if missing; UnsafePath when it or a parent is not safe."""
    ensure_folder(directory, 0o700)


def open_folder(directory: Path) -> int:
    """An fd of the checked folder `directory` (O_NOFOLLOW), to create files in with `dir_fd`."""
    check_folder(directory)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _check_directory_stat(Path(directory), os.fstat(fd), is_leaf=True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable: the entry lives in the directory's own data."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Make a file someone else wrote (zstd, a hard link) durable, without following a link put in its place."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def chmod_private(path: Path) -> None:
    """chmod 0600 a file just made in a checked folder, without following a link put in its place."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def temp_path_for(path: Path) -> Path:
    """The hidden sibling through which `path` is written (never matches a record or dump name)."""
    return path.with_name(f".{path.name}{TEMP_SUFFIX}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_file_atomically(path: Path, data: bytes | BinaryIO, mode: int = 0o600) -> None:
    """Replace `path` with `data` (bytes, or a stream read in chunks) so a crash leaves the old or the
    new content; the file gets `mode` (0600) and is never written through a link. UnsafePath when the
    folder is not safe (see the module). A leftover temp file from a crash is removed first."""
    path = Path(path)
    dir_fd = open_folder(path.parent)
    try:
        temp = temp_path_for(path).name
        try:
            os.unlink(temp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                     dir_fd=dir_fd)
        try:
            os.fchmod(fd, mode)
            if isinstance(data, (bytes, bytearray, memoryview)):
                _write_all(fd, bytes(data))
            else:
                while chunk := data.read(COPY_CHUNK):
                    _write_all(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def copy_file_atomically(source: Path, target: Path, mode: int = 0o600) -> None:
    """Copy `source` to `target` like write_file_atomically (the target never followed, mode 0600)."""
    with open(source, "rb") as stream:
        write_file_atomically(target, stream, mode)


def open_private_file(path: Path, flags: int = os.O_RDWR) -> int:
    """Open (creating it 0600 if missing) a regular file of root's in a checked folder, never through a link."""
    path = Path(path)
    dir_fd = open_folder(path.parent)
    try:
        fd = os.open(path.name, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        raise UnsafePath(f"cannot open {path} safely (a symbolic link there is refused): {exc.strerror}") from exc
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or not _trusted(st.st_uid) or st.st_nlink != 1:
        os.close(fd)
        raise UnsafePath(f"{path} is not a regular file of root's with one link: refusing to use it")
    return fd


def create_private_file(path: Path) -> int:
    """Create a new file 0600 (O_EXCL|O_NOFOLLOW) in a checked folder; FileExistsError if anything is there."""
    path = Path(path)
    dir_fd = open_folder(path.parent)
    try:
        fd = os.open(path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    os.fchmod(fd, 0o600)
    return fd
