"""Root-safe files: folders someone else controls are refused, nothing is ever written through a link."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsnapd.files import (
    UnsafePath,
    check_folder,
    copy_file_atomically,
    ensure_folder,
    ensure_private_directory,
    open_private_file,
    write_file_atomically,
)
from vmsnapd.journal import CycleRecord, Journal
from vmsnapd.overlaynames import memory_file_name
from vmsnapd.ownership import deletable_leftover
from vmsnapd.lock import pass_lock
from vmsnapd.names import encode_name

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing a folder's owner needs root")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "base"
    base.mkdir(mode=0o755)
    return base


def test_folders_are_created_private(root: Path) -> None:
    ensure_private_directory(root / "a" / "b")
    assert mode_of(root / "a") == 0o700 and mode_of(root / "a" / "b") == 0o700
    ensure_folder(root / "overlay", 0o711, set_mode=False)
    assert mode_of(root / "overlay") == 0o711


def test_an_existing_folder_is_made_private(root: Path) -> None:
    (root / "state").mkdir(mode=0o755)
    ensure_private_directory(root / "state")
    assert mode_of(root / "state") == 0o700


@as_root
@pytest.mark.parametrize("which", ["folder", "parent"])
def test_a_folder_another_user_owns_is_refused(root: Path, which: str) -> None:
    folder = root / "parent" / "state"
    folder.mkdir(parents=True, mode=0o700)
    os.chown(folder if which == "folder" else folder.parent, NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match=r"owned by .*uid 65534.*not root"):
        ensure_private_directory(folder)
    with pytest.raises(UnsafePath):
        write_file_atomically(folder / "results.json", b"{}")
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("mode", [0o770, 0o757, 0o777])
def test_a_folder_others_may_write_is_refused(root: Path, mode: int) -> None:
    folder = root / "state"
    folder.mkdir()
    folder.chmod(mode)
    with pytest.raises(UnsafePath, match="may be written by group or others"):
        ensure_private_directory(folder / "cycles")
    assert not (folder / "cycles").exists()


def test_a_sticky_parent_such_as_tmp_is_fine(root: Path) -> None:
    root.chmod(0o1777)
    ensure_private_directory(root / "state")
    write_file_atomically(root / "state" / "f", b"x")
    root.chmod(0o755)


def test_a_link_as_the_folder_is_refused_and_nothing_written_through_it(root: Path) -> None:
    target = root / "target"
    target.mkdir(mode=0o755)
    (root / "ram").symlink_to(target)
    with pytest.raises(UnsafePath, match="symbolic link"):
        ensure_private_directory(root / "ram")
    with pytest.raises(UnsafePath, match="symbolic link"):
        write_file_atomically(root / "ram" / "x.json", b"x")
    assert list(target.iterdir()) == [] and mode_of(target) == 0o755


def test_a_root_owned_link_among_the_parents_is_followed(root: Path) -> None:
    real = root / "real"
    real.mkdir(mode=0o755)
    (root / "link").symlink_to(real)
    ensure_private_directory(root / "link" / "state")
    assert mode_of(real / "state") == 0o700


def test_a_link_among_the_parents_to_an_unsafe_folder_is_refused(root: Path) -> None:
    open_folder = root / "open"
    open_folder.mkdir()
    open_folder.chmod(0o777)
    (root / "link").symlink_to(open_folder)
    with pytest.raises(UnsafePath, match="may be written"):
        ensure_private_directory(root / "link" / "state")


def test_write_replaces_a_planted_link_instead_of_following_it(root: Path) -> None:
    victim = root / "victim"
    victim.write_bytes(b"precious")
    victim.chmod(0o644)
    folder = root / "state"
    ensure_private_directory(folder)
    (folder / "results.json").symlink_to(victim)
    (folder / ".results.json.tmp").symlink_to(victim)  # the temp name too
    write_file_atomically(folder / "results.json", b"new")
    assert victim.read_bytes() == b"precious" and mode_of(victim) == 0o644
    assert not (folder / "results.json").is_symlink() and (folder / "results.json").read_bytes() == b"new"
    assert mode_of(folder / "results.json") == 0o600
    assert sorted(p.name for p in folder.iterdir()) == ["results.json"]


def test_copy_is_private(root: Path) -> None:
    source = root / "nvram.fd"
    source.write_bytes(b"v" * 10_000_000)
    source.chmod(0o644)
    ensure_private_directory(root / "x")
    copy_file_atomically(source, root / "x" / "vm.nvram")
    assert (root / "x" / "vm.nvram").read_bytes() == source.read_bytes()
    assert mode_of(root / "x" / "vm.nvram") == 0o600


def test_a_file_in_place_of_a_folder_is_refused(root: Path) -> None:
    (root / "state").write_bytes(b"")
    with pytest.raises(UnsafePath, match="not a directory"):
        ensure_private_directory(root / "state")


def test_open_private_file_refuses_a_link(root: Path) -> None:
    victim = root / "victim"
    victim.write_bytes(b"precious")
    ensure_private_directory(root / "state")
    (root / "state" / "vmsnapd.lock").symlink_to(victim)
    with pytest.raises(UnsafePath):
        open_private_file(root / "state" / "vmsnapd.lock")
    assert victim.read_bytes() == b"precious"


def test_the_pass_lock_refuses_a_planted_link(root: Path) -> None:
    victim = root / "victim"
    victim.write_bytes(b"precious")
    state = root / "state"
    ensure_private_directory(state)
    (state / "vmsnapd.lock").symlink_to(victim)
    with pytest.raises(UnsafePath), pass_lock(state, wait_s=0):
        pass
    assert victim.read_bytes() == b"precious"


def test_the_pass_lock_refuses_a_state_dir_others_may_write(root: Path) -> None:
    state = root / "state"
    state.mkdir()
    state.chmod(0o777)
    with pytest.raises(UnsafePath), pass_lock(state, wait_s=0):
        pass
    assert list(state.iterdir()) == []


def test_the_pass_lock_works_in_a_safe_state_dir(root: Path) -> None:
    with pass_lock(root / "state", wait_s=0):
        assert (root / "state" / "vmsnapd.lock").read_text().startswith("pid ")
    assert mode_of(root / "state") == 0o700 and mode_of(root / "state" / "vmsnapd.lock") == 0o600


# -- the journal: records are only trusted from a safe folder, and name only files vmsnapd makes --------


def _record(**changes: object) -> CycleRecord:
    return CycleRecord(cycle_id="web-2026-11-29_01:00:00", domain="web", datasets=["rpool/VM/web"],
                       snapshot_names=["autosnap_2026-11-29_01:00:00_hourly"], stamp="2026-11-29_01:00:00",
                       method="overlay", state="frozen", **changes)


def test_records_in_a_folder_others_may_write_are_not_trusted(root: Path) -> None:
    journal = Journal(root / "state")
    journal.begin(_record())
    journal.directory.chmod(0o777)
    scan = journal.scan()
    assert scan.records == [] and len(scan.unreadable) == 1
    assert "may be written" in scan.unreadable[0].reason


def test_a_record_that_is_a_link_is_not_trusted(root: Path) -> None:
    journal = Journal(root / "state")
    journal.begin(_record())
    elsewhere = root / "forged.json"
    elsewhere.write_text(_record(ram_file="/etc/passwd").model_dump_json())
    path = journal.path_of("other-2026-11-29_01:00:00")
    path.symlink_to(elsewhere)
    scan = journal.scan()
    assert [r.cycle_id for r in scan.records] == ["web-2026-11-29_01:00:00"]
    assert [u.path for u in scan.unreadable] == [path]


OVERLAY_DIR = Path("/var/lib/libvirt/snapshots")


@pytest.mark.parametrize(("path", "domain"), [
    ("/var/lib/libvirt/snapshots/web_2026-11-29_01:00:00.mem", "web"),
    ("/var/lib/libvirt/snapshots/web_vda_2026-11-29_01:00:00.qcow2", "web"),
    ("/var/lib/libvirt/snapshots/%2Dodd vm$(touch x)_sdb_2026-11-29_01:00:00.qcow2", "-odd vm$(touch x)"),
    (str(OVERLAY_DIR / memory_file_name("..x", "2026-11-29_01:00:00")), "..x"),
])
def test_files_vmsnapd_makes(path: str, domain: str) -> None:
    assert deletable_leftover(path, domain, str(OVERLAY_DIR))


@pytest.mark.parametrize(("path", "domain"), [
    ("/etc/passwd", "web"),
    ("/var/lib/libvirt/images/web.qcow2", "web"),
    ("/var/lib/libvirt/snapshots/web.qcow2", "web"),  # not our pattern: an admin's file
    ("/var/lib/libvirt/snapshots/db_2026-11-29_01:00:00.mem", "web"),  # another domain's
    ("/var/lib/libvirt/snapshots/../images/web_2026-11-29_01:00:00.mem", "web"),
    ("/var/lib/libvirt/snapshots/sub/web_2026-11-29_01:00:00.mem", "web"),
    ("var/lib/libvirt/snapshots/web_2026-11-29_01:00:00.mem", "web"),
    ("/var/lib/libvirt/snapshots/web_2026-11-29_01:00:00.mem", None),
    ("/var/lib/libvirt/snapshots/-odd_2026-11-29_01:00:00.mem", "-odd"),  # raw, never made so
])
def test_files_vmsnapd_never_makes(path: str, domain: str | None) -> None:
    assert not deletable_leftover(path, domain, str(OVERLAY_DIR))


def test_check_folder_of_a_missing_path(root: Path) -> None:
    with pytest.raises(FileNotFoundError):
        check_folder(root / "missing")


@given(st.text(min_size=1, max_size=40).filter(lambda n: "/" not in n and "\n" not in n and "\x00" not in n),
       st.text(max_size=80))
def test_deletable_leftover_only_ever_accepts_a_file_directly_in_overlay_dir(domain: str, path: str) -> None:
    for candidate in (path, f"{OVERLAY_DIR}/{path}", f"{OVERLAY_DIR}/{encode_name(domain)}_{path}"):
        if deletable_leftover(candidate, domain, str(OVERLAY_DIR)):
            assert Path(candidate).parent == OVERLAY_DIR and ".." not in Path(candidate).parts
            assert Path(candidate).name.startswith(encode_name(domain) + "_")
    assert deletable_leftover(str(OVERLAY_DIR / memory_file_name(domain, "2026-11-29_01:00:00")), domain,
                              str(OVERLAY_DIR))
