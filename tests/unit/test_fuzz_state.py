"""vmsnapd's own state files, damaged in any way: a warning and a sensible default, never a traceback.

results.json (status/check), cycle records (recover), RAM dump manifests (sweep, list, restore).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmsnapd.report import PassReport, TargetOutcome
from vmsnapd.actions.status import RESULTS_FILE, LastResult, _load_results, record_results
from vmsnapd.journal import Journal
from vmsnapd.ramstore import read_manifest

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def directory(tmp_path_factory) -> Path:
    """One directory for all examples of a test (hypothesis does not mix with function-scoped fixtures)."""
    return tmp_path_factory.mktemp("state")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["take", "prune", "action", "ok", "at", "error", "tank/vm"]) | st.text(max_size=5),
        inner, max_size=4),
    max_leaves=10,
)
good_result = {"action": "take", "ok": False, "at": "2026-11-29T01:00:00+00:00", "error": "boom"}
damaged = (st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())
           | st.just(b"[" * 100_000) | st.just(b"\xff\xfe{}") | st.just(b"")
           | st.just(json.dumps({"tank/vm": {"take": {**good_result, "at": "yesterday"}}}).encode()))


@FUZZ
@given(data=damaged)
def test_results_file_of_any_content_loads_as_usable_results(directory, data):
    path = directory / RESULTS_FILE
    path.write_bytes(data)
    results = _load_results(path)
    for per_dataset in results.values():  # exactly what host_status does with it
        for action in ("take", "prune"):
            if action in per_dataset:
                LastResult(**per_dataset[action])


def test_a_valid_results_file_is_read_back(tmp_path):
    path = tmp_path / RESULTS_FILE
    path.write_text(json.dumps({"tank/vm": {"take": good_result}}))
    assert LastResult(**_load_results(path)["tank/vm"]["take"]).error == "boom"


def test_record_results_replaces_a_corrupt_file_with_a_warning(tmp_path, caplog):
    (tmp_path / RESULTS_FILE).write_text('{"tank/vm": [1, 2, 3]}')
    ctx = SimpleNamespace(dry_run=False, state_dir=tmp_path, now=lambda: datetime(2026, 11, 29, tzinfo=timezone.utc))
    report = PassReport(outcomes=[TargetOutcome(action="take", target="tank/vm", datasets=["tank/vm"])])
    with caplog.at_level(logging.WARNING):
        record_results(ctx, report)
    assert "starting it afresh" in caplog.text
    assert LastResult(**_load_results(tmp_path / RESULTS_FILE)["tank/vm"]["take"]).ok


@FUZZ
@given(data=damaged)
def test_cycle_record_of_any_content_is_listed_as_unreadable(directory, data):
    journal = Journal(directory)
    journal.directory.mkdir(parents=True, exist_ok=True)
    (journal.directory / "x.json").write_bytes(data)
    scan = journal.scan()
    assert len(scan.records) + len(scan.unreadable) == 1


@FUZZ
@given(data=damaged)
def test_manifest_of_any_content_is_none_or_a_manifest(directory, data):
    path = directory / "web_2026-11-29_01:00:00.json"
    path.write_bytes(data)
    manifest = read_manifest(path)
    assert manifest is None or manifest.domain


def test_a_garbled_lock_file_still_gives_lock_busy(tmp_path):
    import fcntl
    import os

    from vmsnapd.lock import LockBusy, pass_lock

    path = tmp_path / "vmsnapd.lock"
    path.write_bytes(b"\xff\xfe pid \x00" * 100)
    holder = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(LockBusy, match="another vmsnapd pass"), pass_lock(tmp_path, wait_s=0):
            pass
    finally:
        os.close(holder)
