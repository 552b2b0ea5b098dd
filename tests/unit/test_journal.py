"""The crash journal: atomic, durable, private, and never a crash in recovery."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsnapd.journal import (
    CycleRecord,
    Journal,
    JournalError,
    OverlayRecord,
    cycle_file_name,
    temp_path_for,
)


def make_record(cycle_id: str = "rpool/VM/win-2026-11-29_01:00:00") -> CycleRecord:
    return CycleRecord(
        cycle_id=cycle_id,
        domain="win",
        datasets=["rpool/VM/win"],
        snapshot_names=["autosnap_2026-11-29_01:00:00_hourly", "autosnap_2026-11-29_01:00:00_daily"],
        stamp="2026-11-29_01:00:00",
        method="overlay",
        state="started",
    )


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_begin_update_pending_finish_round_trip(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    record = journal.begin(make_record())
    record = journal.update(
        record,
        state="frozen",
        fs_frozen=True,
        overlays=[OverlayRecord(target="vda", overlay_path="/ov/win.vda.ovl", base_path="/rpool/VM/win/vda.qcow2")],
        ram_file="/ov/win.mem",
    )
    record = journal.update(record, quiesced=True, pause_ms=15, ram_file=None, ram_dump="/ram/win/win.mem")
    [pending] = journal.pending()
    assert pending == record
    assert pending.state == "frozen" and pending.fs_frozen
    assert pending.overlays[0].base_path == "/rpool/VM/win/vda.qcow2"
    assert pending.quiesced and pending.pause_ms == 15
    assert pending.ram_file is None and pending.ram_dump == "/ram/win/win.mem"
    journal.finish(record)
    assert journal.pending() == []
    journal.finish(record)  # idempotent: recovery may finish a cycle twice


def test_update_returns_new_version_and_bumps_updated_at(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    first = journal.begin(make_record())
    second = journal.update(first, state="snapshotted")
    assert first.state == "started"
    assert second.state == "snapshotted"
    assert second.updated_at >= first.updated_at
    assert second.started_at == first.started_at


def test_update_validates_changes(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    record = journal.begin(make_record())
    with pytest.raises(ValueError):
        journal.update(record, method="teleport")
    with pytest.raises(JournalError):
        journal.update(record, cycle_id="other")
    with pytest.raises(JournalError):
        journal.update(record, ram_dumb="/typo")
    assert journal.pending()[0].state == "started"


def test_begin_refuses_a_duplicate_cycle(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.begin(make_record())
    with pytest.raises(JournalError):
        journal.begin(make_record())


def test_permissions_are_private(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "state")
    record = journal.begin(make_record())
    assert mode_of(journal.directory) == 0o700
    assert mode_of(journal.path_of(record.cycle_id)) == 0o600
    journal.update(record, state="frozen")
    assert mode_of(journal.path_of(record.cycle_id)) == 0o600


def test_an_interrupted_write_leaves_the_previous_version(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    record = journal.begin(make_record())
    record = journal.update(record, state="frozen", fs_frozen=True)
    # A crash in the middle of the next write leaves a torn temp file beside the record.
    temp = temp_path_for(journal.path_of(record.cycle_id))
    temp.write_text('{"cycle_id": "rpool/VM/win-2026-11-29_01:00:00", "state": "snapsh')
    [pending] = journal.pending()
    assert pending.state == "frozen" and pending.fs_frozen
    # The next write reuses the leftover temp file, and finish removes it.
    record = journal.update(record, state="snapshotted")
    assert journal.pending()[0].state == "snapshotted"
    journal.finish(record)
    assert list(journal.directory.iterdir()) == []


def test_corrupt_records_are_reported_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal(tmp_path)
    journal.begin(make_record())
    (journal.directory / "truncated.json").write_text('{"cycle_id": "x", "dom')
    (journal.directory / "wrong-shape.json").write_text('{"cycle_id": "y"}')
    (journal.directory / "binary.json").write_bytes(b"\xff\xfe\x00")
    (journal.directory / "notes.txt").write_text("not a record")
    with caplog.at_level(logging.WARNING):
        scan = journal.scan()
    assert [r.cycle_id for r in scan.records] == ["rpool/VM/win-2026-11-29_01:00:00"]
    assert sorted(u.path.name for u in scan.unreadable) == ["binary.json", "truncated.json", "wrong-shape.json"]
    assert len(journal.pending()) == 1
    assert "cannot read cycle record" in caplog.text


def test_pending_without_a_journal_directory(tmp_path: Path) -> None:
    assert Journal(tmp_path / "never-created").pending() == []


def test_several_cycles_in_flight(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for name in ("a", "b", "c"):
        journal.begin(make_record(f"rpool/VM/{name}-2026-11-29_01:00:00"))
    assert sorted(r.cycle_id for r in journal.pending()) == [
        f"rpool/VM/{name}-2026-11-29_01:00:00" for name in ("a", "b", "c")
    ]


@pytest.mark.parametrize("cycle_id", ["..", ".", "../../etc/passwd", "/abs/path", "a/b", "a\x00b", "x" * 600])
def test_hostile_cycle_ids_stay_inside_the_journal(tmp_path: Path, cycle_id: str) -> None:
    journal = Journal(tmp_path / "state")
    path = journal.path_of(cycle_id)
    assert path.parent == journal.directory
    assert "/" not in path.name and "\x00" not in path.name
    assert not path.name.startswith(".")
    assert len(path.name) < 255
    journal.begin(make_record(cycle_id))
    assert [r.cycle_id for r in journal.pending()] == [cycle_id]


@settings(max_examples=200)
@given(st.text(min_size=1, max_size=60), st.text(min_size=1, max_size=60))
def test_distinct_cycle_ids_get_distinct_file_names(first: str, second: str) -> None:
    if first != second:
        assert cycle_file_name(first) != cycle_file_name(second)


# -- file names: names.encode_name, and records an older vmsnapd wrote under its own names -------------------

# (cycle id, the name vmsnapd gave its record before names.encode_name) — the old names spelled out, so the
# test does not depend on the code it checks.
LEGACY_NAMES = [
    ("rpool/VM/win-2026-11-29_01:00:00", "rpool%2FVM%2Fwin-2026-11-29_01:00:00.json"),  # the same as today's
    ("db 1 (test)-2026-11-29_01:00:00", "db%201%20%28test%29-2026-11-29_01:00:00.json"),
    ("-web~x-2026-11-29_01:00:00", "-web~x-2026-11-29_01:00:00.json"),
]


def test_a_cycle_file_name_is_the_encoded_name() -> None:
    from vmsnapd.names import encode_name

    for cycle_id in ("rpool/VM/win-2026-11-29_01:00:00", "db 1 (test)-x", "-web", ".hidden", "é/ü"):
        assert cycle_file_name(cycle_id) == encode_name(cycle_id) + ".json"


@pytest.mark.parametrize(("cycle_id", "legacy"), LEGACY_NAMES)
def test_a_record_under_its_legacy_name_is_read_updated_and_finished(tmp_path: Path, cycle_id: str,
                                                                      legacy: str) -> None:
    journal = Journal(tmp_path)
    record = make_record(cycle_id)
    journal.begin(record)
    journal.path_of(cycle_id).rename(journal.directory / legacy)  # as an older vmsnapd left it at a crash
    [found] = journal.pending()
    assert found.cycle_id == cycle_id
    with pytest.raises(JournalError, match="already in the journal"):
        journal.begin(make_record(cycle_id))
    updated = journal.update(found, state="frozen")
    assert [(r.cycle_id, r.state) for r in journal.pending()] == [(cycle_id, "frozen")]  # one record, not two
    journal.path_of(cycle_id).rename(journal.directory / legacy)
    journal.finish(updated)
    assert journal.pending() == [] and list(journal.directory.iterdir()) == []
