"""The RAM staging folder (vmsnapd.staging): the pure rule, the host-fact parsers (any text: a result, never an
exception), the reservations between cycles running at once, and the cycle and `recover` with the fakes. The
same on real libvirt and a real tmpfs: tests/integration/test_staging.py."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import vmsnapd.holdstill as holdstill
from fakehost import make_host
from vmsnapd.config import ConfigError, parse_config
from vmsnapd.hvtypes import NoSpace
from vmsnapd.ownership import deletable_leftover
from vmsnapd.overlaynames import memory_file_name, overlay_file_name
from vmsnapd.staging import (STAGING_FACTOR, Claim, Refusal, StagingArea, StagingFacts, fs_type_of,
                             largest_staged, parse_meminfo, staging_note, staging_refusal)

SNAP = "tank/web@autosnap_2026-11-29_01:00:00_hourly"
GIB = 1 << 30
MIB = 1 << 20


def facts(free: int = 4 * GIB, fs_type: str | None = "tmpfs", available: int | None = 20 * GIB,
          total: int | None = 24 * GIB, reserved: int = 0) -> StagingFacts:
    return StagingFacts(free=free, fs_type=fs_type, mem_available=available, mem_total=total, reserved=reserved)


# -- the rule -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("given_facts, memory, refused", [
    (facts(), GIB, None),
    (facts(free=GIB), GIB, "it has 1024 MiB free, the RAM file may need 1536 MiB"),
    (facts(free=3 * GIB, reserved=2 * GIB), GIB, "2048 MiB of it promised"),  # others were promised room
    (facts(fs_type="ext4", available=0), GIB, None),  # a disk: the host's memory does not matter
    (facts(fs_type=None, available=None), GIB, None),
    (facts(available=3 * GIB, total=24 * GIB), GIB, "less than 10% of its memory"),
    (facts(available=None), GIB, "available memory cannot be read"),
    (facts(fs_type="ramfs", total=0), GIB, "available memory cannot be read"),
])
def test_staging_refusal(given_facts, memory, refused):
    why = staging_refusal(given_facts, memory)
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why


def test_memory_promised_to_other_cycles_counts_against_the_host_too():
    assert staging_refusal(facts(free=40 * GIB, available=6 * GIB, reserved=0), 2 * GIB) is None
    assert "memory" in staging_refusal(facts(free=40 * GIB, available=6 * GIB, reserved=3 * GIB), 2 * GIB)


@given(free=st.integers(0, 1 << 45), fs_type=st.sampled_from(["tmpfs", "ramfs", "ext4", None]),
       available=st.one_of(st.none(), st.integers(0, 1 << 42)), total=st.integers(0, 1 << 42),
       reserved=st.integers(0, 1 << 40))
def test_largest_staged_is_the_rules_limit(free, fs_type, available, total, reserved):
    """`config check`'s figure is exactly the rule's: that guest is staged, one MiB more is not."""
    given_facts = StagingFacts(free=free, fs_type=fs_type, mem_available=available, mem_total=total,
                               reserved=reserved)
    largest = largest_staged(given_facts)
    if largest > 0:
        assert staging_refusal(given_facts, largest) is None
    assert staging_refusal(given_facts, largest + MIB) is not None


def test_staging_note():
    assert "guests with up to 2730 MiB of memory are staged" in staging_note(Path("/run/vmsnapd/staging"),
                                                                           facts(free=4 * GIB))
    assert "no room" in staging_note(Path("/run/vmsnapd/staging"), facts(free=MIB))


# -- host facts ---------------------------------------------------------------------------------------------------

MEMINFO = "MemTotal:       24683580 kB\nMemFree:        23851032 kB\nMemAvailable:   24283024 kB\nHugePages_Total:       0\n"
MOUNTINFO = """\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:23 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,size=2468360k,mode=755
26 25 0:24 / /run/lock rw shared:6 - tmpfs tmpfs rw,size=5120k
40 22 0:40 / /srv/my\\040stage rw shared:20 - ramfs ramfs rw
41 25 0:41 / /run rw shared:21 - zfs tank/run rw
"""


def test_parse_meminfo():
    info = parse_meminfo(MEMINFO)
    assert info["MemAvailable"] == 24283024 * 1024 and info["MemTotal"] == 24683580 * 1024
    assert info["HugePages_Total"] == 0


@pytest.mark.parametrize("path, fs_type", [
    ("/run/vmsnapd/staging", "zfs"),  # mounted over: the last mount on a point wins
    ("/run/lock/x", "tmpfs"),
    ("/runner", "ext4"),
    ("/srv/my stage/vmsnapd", "ramfs"),  # mountinfo's \040 is a space
    ("/", "ext4"),
])
def test_fs_type_of(path, fs_type):
    assert fs_type_of(path, MOUNTINFO) == fs_type


@given(st.text())
def test_any_meminfo_text_gives_a_result(text):
    assert all(isinstance(v, int) and v >= 0 for v in parse_meminfo(text).values())


@given(st.text(), st.text())
def test_any_mountinfo_text_gives_a_result(text, path):
    assert fs_type_of("/" + path, text) is None or isinstance(fs_type_of("/" + path, text), str)


# -- reservations -------------------------------------------------------------------------------------------------

def area(tmp_path: Path, free: int, **kw) -> StagingArea:
    return StagingArea(tmp_path / "staging", facts=lambda _folder: facts(free=free, **kw))


def test_a_claim_holds_its_room_until_released(tmp_path):
    staging = area(tmp_path, free=int(2.5 * GIB))
    first = staging.claim(GIB)
    second = staging.claim(GIB)
    assert isinstance(first, Claim) and first.folder == tmp_path / "staging"
    assert isinstance(second, Refusal) and "promised to cycles under way" in second.reason and not second.loud
    staging.release(first)
    assert isinstance(staging.claim(GIB), Claim)
    assert oct((tmp_path / "staging").stat().st_mode & 0o777) == oct(0o700)


def test_cycles_claiming_at_once_never_promise_more_than_the_room(tmp_path):
    staging = area(tmp_path, free=int(3.5 * STAGING_FACTOR * GIB))
    results: list[Claim | Refusal] = []
    threads = [threading.Thread(target=lambda: results.append(staging.claim(GIB))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, Claim) for r in results) == 3


def test_a_folder_someone_else_owns_is_refused_loudly(tmp_path):
    folder = tmp_path / "staging"
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, 65534)
    refusal = StagingArea(folder, facts=lambda _f: facts()).claim(GIB)
    assert isinstance(refusal, Refusal) and refusal.loud and "not root" in refusal.reason


def test_a_dry_run_creates_no_folder(tmp_path):
    claim = StagingArea(tmp_path / "staging", dry_run=True, facts=lambda _f: facts()).claim(GIB)
    assert isinstance(claim, Claim) and not (tmp_path / "staging").exists()


# -- the cycle and recover ------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    monkeypatch.setattr(holdstill, "COMMIT_RETRY_DELAY_S", 0.0)
    monkeypatch.setattr("os.fsync", lambda fd: None)


@pytest.mark.parametrize("method, verb", [("overlay", "snapshot_external"), ("pause", "snapshot_manual")])
def test_the_ram_file_is_staged_and_moved_into_the_store(tmp_path, method, verb):
    host = make_host(tmp_path, policy={"method": method})
    staging = area(tmp_path, free=GIB)

    outcome = host.cycle(staging=staging)

    assert outcome.ok, outcome.error
    [call] = host.hv.verbs(verb)
    assert str(tmp_path / "staging" / host.memory_name()) in call
    assert len([d for d in host.dumps() if d.endswith(".mem")]) == 1
    assert list((tmp_path / "staging").iterdir()) == [] and host.overlay_files() == []
    assert isinstance(staging.claim(int(GIB / STAGING_FACTOR)), Claim)  # the cycle gave its room back


def test_without_room_the_ram_file_goes_to_overlay_dir(tmp_path, caplog):
    host = make_host(tmp_path)
    caplog.set_level("INFO")

    outcome = host.cycle(staging=area(tmp_path, free=MIB))

    assert outcome.ok and not outcome.warnings, outcome
    [call] = host.hv.verbs("snapshot_external")
    assert call[3] == str(host.overlay_dir / host.memory_name())
    assert "RAM file in overlay_dir, not in ram_staging_dir" in caplog.text
    assert len([d for d in host.dumps() if d.endswith(".mem")]) == 1


def test_a_failed_cycle_discards_the_staged_file_and_gives_its_room_back(tmp_path):
    host = make_host(tmp_path, policy={"method": "pause", "quiesce": "off"})
    staging = area(tmp_path, free=GIB)
    host.zfs.fail("snapshot", RuntimeError("zfs broke"))

    outcome = host.cycle(staging=staging)

    assert not outcome.ok and host.dumps() == []
    assert list((tmp_path / "staging").iterdir()) == []
    assert isinstance(staging.claim(int(GIB / STAGING_FACTOR)), Claim)


def test_recover_deletes_the_staged_ram_file_of_a_killed_cycle(tmp_path):
    host = make_host(tmp_path, policy={"method": "pause", "quiesce": "off"})

    host.cycle_killed_at_zfs_snapshot(staging=area(tmp_path, free=GIB))
    [record] = host.records()
    assert record.ram_file == str(tmp_path / "staging" / host.memory_name()) and Path(record.ram_file).exists()

    report = host.recover()

    assert report.errors == [] and not Path(record.ram_file).exists()
    assert host.records() == []


@pytest.mark.parametrize("method, verb", [("overlay", "snapshot_external"), ("pause", "snapshot_manual")])
def test_a_staging_folder_that_fills_up_during_the_capture_is_retried_in_overlay_dir(tmp_path, method, verb):
    """libvirt undoes a RAM capture whose file system filled up (measured on the lab: guest running on its base
    disks, no file left): the cycle holds the disks again with the RAM file in overlay_dir."""
    host = make_host(tmp_path, policy={"method": method})
    staging = area(tmp_path, free=GIB)
    host.hv.fail(verb, NoSpace("snapshot of web: Unable to write /x.mem: No space left on device"))

    outcome = host.cycle(staging=staging)

    assert outcome.ok, outcome.error
    assert any("filled up during the RAM capture" in w for w in outcome.warnings), outcome.warnings
    first, second = host.hv.verbs(verb)
    assert str(tmp_path / "staging" / host.memory_name()) in first
    assert str(host.overlay_dir / host.memory_name()) in second
    assert host.zfs.snapshots == [SNAP] and len([d for d in host.dumps() if d.endswith(".mem")]) == 1
    assert host.records() == [] and host.overlay_files() == []
    assert isinstance(staging.claim(int(GIB / STAGING_FACTOR)), Claim)


@pytest.mark.parametrize("staged", [False, True])
def test_a_full_file_system_is_never_retried_with_the_ram_file_in_it_again(tmp_path, staged):
    """Once overlay_dir filled up, the last hold leaves the RAM out (disk-only, tests/unit/test_ram_capture_full.py):
    a folder that filled up never gets the RAM file again."""
    host = make_host(tmp_path)
    full = NoSpace("snapshot of web: No space left on device")
    host.hv.fail("snapshot_external", *([full, full] if staged else [full]))  # each folder with a RAM file is full

    outcome = host.cycle(staging=area(tmp_path, free=GIB) if staged else None)

    assert outcome.ok, outcome.error
    calls = host.hv.verbs("snapshot_external")
    assert len(calls) == (3 if staged else 2)
    assert host.memory_name() not in str(calls[-1])
    assert host.zfs.snapshots == [SNAP] and host.records() == [] and host.overlay_files() == []


STAGE = "/run/vmsnapd/staging"
OD = "/var/lib/libvirt/snapshots"


@pytest.mark.parametrize("path, ok", [
    (f"{STAGE}/{memory_file_name('web', '2026-11-29_01:00:00')}", True),
    (f"{STAGE}/{memory_file_name('other', '2026-11-29_01:00:00')}", False),
    (f"{STAGE}/{overlay_file_name('web', 'vda', '2026-11-29_01:00:00')}", False),  # overlays never live there
    (f"{STAGE}/sub/{memory_file_name('web', '2026-11-29_01:00:00')}", False),
    (f"{OD}/{overlay_file_name('web', 'vda', '2026-11-29_01:00:00')}", True),
])
def test_deletable_leftover_in_the_staging_folder(path, ok):
    assert deletable_leftover(path, "web", OD, STAGE) is ok
    assert not deletable_leftover(path, "web", OD) or path.startswith(OD)  # no staging folder: never there


# -- configuration ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, error", [
    ("", None),
    ("/dev/shm/vmsnapd", None),
    ("run/vmsnapd", "absolute path"),
    ("/var/lib/vmsnapd/staging", "must not contain ram_staging_dir"),
    ("/var/lib/libvirt/snapshots", "must not be the same folder"),
    ("/", "must not be /"),
])
def test_ram_staging_dir_setting(value, error):
    text = f'[daemon]\nram_staging_dir = "{value}"\n'
    if error is None:
        assert parse_config(text).daemon.ram_staging_dir == value
    else:
        with pytest.raises(ConfigError, match=error):
            parse_config(text)


def test_config_check_says_how_big_a_guest_the_staging_folder_takes(tmp_path):
    from vmsnapd.cli import _staging_note

    note = _staging_note(parse_config(f'[daemon]\nram_staging_dir = "{tmp_path}/staging"\n').daemon)
    assert f"ram_staging_dir {tmp_path}/staging (" in note and "MiB" in note
    assert _staging_note(parse_config('[daemon]\nram_staging_dir = ""\n').daemon) == ""
