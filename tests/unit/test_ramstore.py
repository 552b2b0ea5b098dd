"""RAM dumps: storing (plain and zstd), permissions, manifest last, the sweep on real files, restore, checksums."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsnapd.ramstore import (
    DumpDisk,
    RamDumpInfo,
    RamManifest,
    RamStore,
    RamStoreError,
    copy_hashing,
    hash_file,
)
from vmsnapd.ramsweep import plan_ram_sweep
from vmsnapd.runner import Runner

ZSTD = shutil.which("zstd") or "/usr/bin/zstd"
needs_zstd = pytest.mark.skipif(not Path(ZSTD).exists(), reason="zstd binary not installed")

STAMP1 = "2026-11-29_01:00:00"
STAMP2 = "2026-11-29_02:00:00"
STAMP3 = "2026-11-29_03:00:00"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def make_info(domain: str = "win", stamp: str = STAMP1, periods: tuple[str, ...] = ("hourly",)) -> RamDumpInfo:
    return RamDumpInfo(
        domain=domain,
        stamp=stamp,
        datasets=[f"rpool/VM/{domain}", f"rpool/VM/{domain}-data"],
        snapshot_names=[f"autosnap_{stamp}_{period}" for period in periods],
        domain_xml=f"<domain><name>{domain}</name></domain>",
        disks=[DumpDisk(target="vda", source=f"/rpool/VM/{domain}/vda.qcow2", dataset=f"rpool/VM/{domain}")],
        method="overlay",
        live=True,
        quiesced=False,
        pause_ms=12,
    )


def fresh_ram_file(directory: Path, name: str = "win.mem", size: int = 9 * 1024 * 1024 + 123) -> tuple[Path, bytes]:
    """A RAM-file stand-in larger than one copy chunk, partly compressible."""
    directory.mkdir(parents=True, exist_ok=True)
    content = (os.urandom(1024 * 1024) + bytes(1024 * 1024)) * (size // (2 * 1024 * 1024)) + b"tail" * 100
    path = directory / name
    path.write_bytes(content)
    return path, content


@pytest.fixture
def store(tmp_path: Path) -> RamStore:
    return RamStore(tmp_path / "ram", runner=Runner(), zstd_bin=ZSTD)


def test_keep_uncompressed(store: RamStore, tmp_path: Path) -> None:
    fresh, content = fresh_ram_file(tmp_path / "overlays")
    dump = store.keep(fresh, make_info(), compression="none")
    assert dump.path == store.ram_dir / "win" / f"win_{STAMP1}.mem"
    assert dump.manifest_path == store.ram_dir / "win" / f"win_{STAMP1}.json"
    assert dump.path.read_bytes() == content
    assert not fresh.exists()
    manifest = RamManifest.model_validate_json(dump.manifest_path.read_text())
    assert manifest.sha256 == hashlib.sha256(content).hexdigest()
    assert manifest.size == manifest.raw_size == len(content)
    assert manifest.compression == "none"
    assert manifest.pause_ms == 12 and manifest.method == "overlay"
    assert manifest.snapshot_names == [f"autosnap_{STAMP1}_hourly"]
    assert manifest.vmsnapd_version
    assert store.verify(dump)


def test_modes_are_private(store: RamStore, tmp_path: Path) -> None:
    fresh, _ = fresh_ram_file(tmp_path / "overlays")
    fresh.chmod(0o644)
    dump = store.keep(fresh, make_info(), compression="none")
    assert mode_of(store.ram_dir) == 0o700
    assert mode_of(dump.path.parent) == 0o700
    assert mode_of(dump.path) == 0o600
    assert mode_of(dump.manifest_path) == 0o600


def test_keep_across_file_systems_copies(store: RamStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def cross_device_link(source: object, target: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device_link)
    fresh, content = fresh_ram_file(tmp_path / "overlays")
    fresh.chmod(0o644)
    dump = store.keep(fresh, make_info(), compression="none")
    assert dump.path.read_bytes() == content
    assert mode_of(dump.path) == 0o600
    assert not fresh.exists()
    assert store.verify(dump)


@needs_zstd
def test_keep_with_zstd_and_restore_round_trip(store: RamStore, tmp_path: Path) -> None:
    fresh, content = fresh_ram_file(tmp_path / "overlays")
    fresh.chmod(0o644)
    dump = store.keep(fresh, make_info(), compression="zstd")
    assert dump.path.name == f"win_{STAMP1}.mem.zst"
    assert dump.compressed
    assert mode_of(dump.path) == 0o600
    assert not fresh.exists()
    manifest = dump.manifest
    assert manifest is not None
    assert manifest.compression == "zstd"
    assert manifest.raw_size == len(content)
    assert manifest.size == dump.path.stat().st_size < len(content)
    assert manifest.sha256 == hashlib.sha256(dump.path.read_bytes()).hexdigest()
    assert store.verify(dump)
    work = tmp_path / "restore-work"
    with store.restore_source(dump, work) as raw:
        assert raw.read_bytes() == content
        assert mode_of(raw) == 0o600
    assert not raw.exists()


def test_restore_source_of_an_uncompressed_dump_is_the_dump(store: RamStore, tmp_path: Path) -> None:
    fresh, content = fresh_ram_file(tmp_path / "overlays")
    dump = store.keep(fresh, make_info(), compression="none")
    with store.restore_source(dump, tmp_path / "work") as raw:
        assert raw == dump.path
    assert dump.path.exists()


def test_failed_compression_leaves_the_fresh_file_and_no_dump(tmp_path: Path) -> None:
    broken = RamStore(tmp_path / "ram", runner=Runner(), zstd_bin="/bin/false")
    fresh, content = fresh_ram_file(tmp_path / "overlays")
    with pytest.raises(RamStoreError):
        broken.keep(fresh, make_info(), compression="zstd")
    assert fresh.read_bytes() == content
    assert broken.dumps() == []
    assert list((tmp_path / "ram" / "win").iterdir()) == []


def test_keep_refuses_to_overwrite_a_dump(store: RamStore, tmp_path: Path) -> None:
    first, first_content = fresh_ram_file(tmp_path / "overlays", "a.mem")
    dump = store.keep(first, make_info(), compression="none")
    second, _ = fresh_ram_file(tmp_path / "overlays", "b.mem")
    with pytest.raises(RamStoreError):
        store.keep(second, make_info(), compression="none")
    assert second.exists()
    assert dump.path.read_bytes() == first_content


def test_manifest_is_written_last(store: RamStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash before the manifest leaves a dump that is recognisably half-written."""
    import vmsnapd.ramstore as ramstore

    def crash(path: Path, data: bytes) -> None:
        assert (store.ram_dir / "win" / f"win_{STAMP1}.mem").stat().st_size > 0  # dump already complete
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ramstore, "write_file_atomically", crash)
    fresh, _ = fresh_ram_file(tmp_path / "overlays")
    with pytest.raises(RamStoreError):
        store.keep(fresh, make_info(), compression="none")
    assert fresh.exists()  # the cycle still has its RAM file to decide about


def good_half_and_corrupt(store: RamStore, tmp_path: Path) -> tuple:
    """Three dumps of `win`: whole (STAMP1), half-written (STAMP2: no manifest), a damaged manifest (STAMP3)."""
    fresh, _ = fresh_ram_file(tmp_path / "overlays")
    good = store.keep(fresh, make_info(), compression="none")
    domain_dir = good.path.parent
    half = domain_dir / f"win_{STAMP2}.mem"
    half.write_bytes(b"partial")
    corrupt = domain_dir / f"win_{STAMP3}.mem"
    corrupt.write_bytes(b"whole")
    (domain_dir / f"win_{STAMP3}.json").write_text("{not json")
    return good, half, corrupt


def test_half_written_and_corrupt_manifests(store: RamStore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, half, _ = good_half_and_corrupt(store, tmp_path)
    assert [d.path for d in store.dumps() if not d.manifest_path.exists()] == [half]  # half-written
    with caplog.at_level(logging.WARNING):
        by_stamp = {d.stamp: d for d in store.dumps()}
    assert by_stamp[STAMP1].manifest is not None
    assert by_stamp[STAMP2].manifest is None
    assert by_stamp[STAMP3].manifest is None
    assert "unreadable" in caplog.text
    assert not store.verify(by_stamp[STAMP3])


def test_an_interrupted_cycles_half_written_dump_is_discarded_and_nothing_else(store: RamStore,
                                                                                 tmp_path: Path) -> None:
    good, half, corrupt = good_half_and_corrupt(store, tmp_path)  # a damaged manifest is evidence: kept

    assert store.discard_half_made("win", STAMP2, dry_run=True) == [f"dry-run: deleted half-written RAM dump {half}"]
    assert half.exists()
    assert [store.discard_half_made("win", stamp, dry_run=False) for stamp in (STAMP1, STAMP3)] == [[], []]
    assert store.discard_half_made("win", STAMP2, dry_run=False) == [f"deleted half-written RAM dump {half}"]
    assert not half.exists() and good.path.exists() and corrupt.exists()


def test_verify_detects_damage(store: RamStore, tmp_path: Path) -> None:
    fresh, _ = fresh_ram_file(tmp_path / "overlays")
    dump = store.keep(fresh, make_info(), compression="none")
    with open(dump.path, "r+b") as stream:
        stream.seek(1000)
        stream.write(b"\x42")
    assert not store.verify(dump)


def test_foreign_files_are_never_listed(store: RamStore, tmp_path: Path) -> None:
    fresh, _ = fresh_ram_file(tmp_path / "overlays")
    store.keep(fresh, make_info(), compression="none")
    foreign = [
        store.ram_dir / "README",
        store.ram_dir / "win" / "notes.txt",
        store.ram_dir / "win" / "win-manual-backup.mem",
        store.ram_dir / "win" / f"other_{STAMP2}.mem",  # not this directory's domain
        store.ram_dir / "win" / f"win_{STAMP2}.mem.bak",
        store.ram_dir / "lost+found" / "x",
    ]
    for path in foreign:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"someone else's")
    dumps = store.dumps()
    assert [d.stamp for d in dumps] == [STAMP1]
    assert all(d.manifest_path.exists() for d in dumps)
    for planned in plan_ram_sweep(store.dumps(), set(), {"rpool/VM/win", "rpool/VM/win-data"}, {},
                                  force=True).deletions:
        store.delete(planned.dump, dry_run=False)
    assert all(path.exists() for path in foreign)
    assert store.dumps() == []


def test_find(store: RamStore, tmp_path: Path) -> None:
    fresh, _ = fresh_ram_file(tmp_path / "overlays")
    dump = store.keep(fresh, make_info(), compression="none")
    assert store.find("win", STAMP1) == dump
    assert store.find("win", STAMP2) is None
    assert store.find("other", STAMP1) is None


def test_delete_and_dry_run(store: RamStore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fresh, content = fresh_ram_file(tmp_path / "overlays")
    dump = store.keep(fresh, make_info(), compression="none")
    expected = len(content) + dump.manifest_path.stat().st_size
    with caplog.at_level(logging.INFO):
        assert store.delete(dump, dry_run=True) == expected
    assert "dry-run: would delete RAM dump" in caplog.text
    assert dump.path.exists() and dump.manifest_path.exists()
    assert store.delete(dump, dry_run=False) == expected
    assert not dump.path.exists() and not dump.manifest_path.exists()


@pytest.mark.parametrize("domain", ["", "..", "a/b", "../etc"])
def test_names_libvirt_refuses_are_refused(domain: str) -> None:
    with pytest.raises(ValueError):
        make_info(domain=domain)


@pytest.mark.parametrize(("domain", "folder"), [
    ("-odd vm$(touch x)", "%2Dodd vm$(touch x)"), ("..x", "%2E.x"), (".hidden", "%2Ehidden"), ("é/", None),
])
def test_any_libvirt_name_is_stored_under_its_encoding(store: RamStore, tmp_path: Path, domain: str,
                                                        folder: str | None) -> None:
    if folder is None:
        with pytest.raises(ValueError):
            make_info(domain=domain)
        return
    fresh, _content = fresh_ram_file(tmp_path / "overlays")
    dump = store.keep(fresh, make_info(domain=domain), compression="none")
    assert dump.path == store.ram_dir / folder / f"{folder}_{STAMP1}.mem"
    assert sorted(p.name for p in store.ram_dir.iterdir()) == [folder]  # nothing else, nothing outside
    assert store.find(domain, STAMP1).path == dump.path
    assert store.dumps()[0].domain == domain


def test_dumps_named_before_the_encoding_are_found(store: RamStore, tmp_path: Path) -> None:
    # An older vmsnapd named the folder after the raw name ("50%" was allowed then): its manifest tells.
    fresh, _content = fresh_ram_file(tmp_path / "overlays")
    dump = store.keep(fresh, make_info(domain="50%"), compression="none")
    legacy = store.ram_dir / "50%"
    dump.path.parent.rename(legacy)
    for path in legacy.iterdir():
        path.rename(legacy / path.name.replace("50%25", "50%"))
    [found] = store.dumps()
    assert found.domain == "50%" and found.path == legacy / f"50%_{STAMP1}.mem" and found.manifest is not None


def test_a_link_in_place_of_the_domain_folder_is_refused(store: RamStore, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    store.ram_dir.mkdir(mode=0o700)
    (store.ram_dir / "win").symlink_to(elsewhere)
    fresh, _content = fresh_ram_file(tmp_path / "overlays")
    with pytest.raises(OSError, match="symbolic link"):
        store.keep(fresh, make_info(), compression="none")
    assert list(elsewhere.iterdir()) == [] and mode_of(elsewhere) == 0o755
    assert fresh.exists()


def test_a_ram_dir_others_may_write_is_refused(store: RamStore, tmp_path: Path) -> None:
    store.ram_dir.mkdir(mode=0o777)
    store.ram_dir.chmod(0o777)
    fresh, _content = fresh_ram_file(tmp_path / "overlays")
    with pytest.raises(OSError, match="may be written by group or others"):
        store.keep(fresh, make_info(), compression="none")
    assert list(store.ram_dir.iterdir()) == []


def test_stamp_must_be_a_cycle_stamp() -> None:
    with pytest.raises(ValueError):
        make_info(stamp="2026-11-29 01:00")


# -- the sweep rule on real files (the rule itself: test_ramsweep.py) ------------------------------


def test_sweep_plan_on_real_files(store: RamStore, tmp_path: Path) -> None:
    for stamp in (STAMP1, STAMP2):
        fresh, _ = fresh_ram_file(tmp_path / "overlays", f"{stamp}.mem", size=4096)
        store.keep(fresh, make_info(stamp=stamp, periods=("hourly", "daily")), compression="none")
    live = {("rpool/VM/win", f"autosnap_{STAMP2}_hourly")}
    [planned] = plan_ram_sweep(store.dumps(), live, {"rpool/VM/win", "rpool/VM/win-data"}, {}).deletions
    assert planned.dump.stamp == STAMP1
    freed = store.delete(planned.dump, dry_run=False, reason=planned.reason)
    assert freed > 0
    assert [d.stamp for d in store.dumps()] == [STAMP2]


def test_manifest_json_is_readable_by_humans(store: RamStore, tmp_path: Path) -> None:
    fresh, _ = fresh_ram_file(tmp_path / "overlays", size=4096)
    dump = store.keep(fresh, make_info(), compression="none")
    data = json.loads(dump.manifest_path.read_text())
    for key in ("domain", "stamp", "datasets", "snapshot_names", "domain_xml", "disks", "method", "live",
                "quiesced", "pause_ms", "size", "raw_size", "sha256", "compression", "created_at",
                "vmsnapd_version"):
        assert key in data


@settings(max_examples=40, deadline=None)
@given(size=st.integers(min_value=0, max_value=5 * 16 + 3), seed=st.binary(min_size=1, max_size=8))
def test_copy_and_hash_through_one_buffer_keep_every_byte(tmp_path_factory, size: int, seed: bytes) -> None:
    """copy_hashing and hash_file read into one reused buffer (ramstore.chunks): any size around the chunk
    boundaries gives the exact bytes and their sha256 (a 16-byte chunk here)."""
    folder = tmp_path_factory.mktemp("chunks")
    data = (seed * (size // len(seed) + 1))[:size]
    (folder / "fresh").write_bytes(data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("vmsnapd.ramstore.COPY_CHUNK", 16)
        copied = copy_hashing(folder / "fresh", folder / "copy")
        hashed = hash_file(folder / "fresh")
    expected = (len(data), hashlib.sha256(data).hexdigest())
    assert copied == hashed == expected
    assert (folder / "copy").read_bytes() == data
