"""`status` and `check` see the crash journal (trust drill): a record recover cannot read, or a cycle crashed and
not recovered minutes later, made every pass's recover fail (`once` exit 1, an error in the log every minute)
while `check` said OK. The lab side: tests/integration/test_check_journal_lab.py."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from vmsnapd.actions.status import INTERRUPTED_AFTER, journal_facts
from vmsnapd.journal import CycleRecord, JournalScan, UnreadableRecord
from vmsnapd.monitoring import CheckFacts, State, plan_check

NOW = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)


def record(updated_at: str, pid: int = 4242) -> CycleRecord:
    return CycleRecord(cycle_id="tank/web-2026-11-29_01:00:00", domain="web", datasets=["tank/web"],
                       snapshot_names=[], stamp="2026-11-29_01:00:00", method="overlay", state="frozen", pid=pid,
                       updated_at=updated_at)


def scan(*records: CycleRecord, unreadable: tuple[str, ...] = ()) -> JournalScan:
    return JournalScan(records=list(records),
                       unreadable=[UnreadableRecord(path=Path(p), reason="expected value") for p in unreadable])


def test_an_unreadable_record_is_reported_with_its_reason():
    bad, stuck = journal_facts(scan(unreadable=("/var/lib/vmsnapd/cycles/x.json",)), NOW, lambda pid: False)
    assert stuck == [] and len(bad) == 1
    assert bad[0].startswith("/var/lib/vmsnapd/cycles/x.json cannot be read: expected value (recover fails")


def test_a_cycle_in_flight_is_not_reported_an_old_one_whose_process_is_gone_is():
    old = (NOW - INTERRUPTED_AFTER - timedelta(seconds=1)).isoformat()
    recent = (NOW - timedelta(seconds=30)).isoformat()
    assert journal_facts(scan(record(recent)), NOW, lambda pid: False) == ([], [])  # the next pass recovers it
    assert journal_facts(scan(record(old)), NOW, lambda pid: True) == ([], [])  # still running (a long commit)
    _, stuck = journal_facts(scan(record(old)), NOW, lambda pid: False)
    assert len(stuck) == 1 and "cycle tank/web-2026-11-29_01:00:00 interrupted in state frozen" in stuck[0]


@settings(max_examples=200, deadline=None)
@given(updated_at=st.text(max_size=40) | st.datetimes().map(datetime.isoformat), pid=st.integers(-2**40, 2**40),
       alive=st.booleans())
def test_any_time_or_pid_in_a_record_gives_a_verdict(updated_at, pid, alive):
    """The record's fields come from a file: never a traceback; a time that cannot be read counts as old."""
    _, stuck = journal_facts(scan(record(updated_at, pid)), NOW, lambda p: alive)
    assert len(stuck) <= 1 and (alive or stuck or datetime.fromisoformat(updated_at).tzinfo is not None)


def test_check_is_critical_for_either():
    facts = CheckFacts(configured_tables=1, journal_unreadable=["/x.json cannot be read: boom"],
                       interrupted_cycles=["cycle a interrupted in state frozen"])
    result = plan_check(facts, NOW)
    assert result.state == State.CRITICAL
    assert "journal record /x.json cannot be read: boom" in result.summary and "cycle a interrupted" in result.summary


def test_a_pid_from_a_file_is_never_a_process_group_or_out_of_range():
    import os

    from vmsnapd.actions.status import _process_exists

    assert _process_exists(os.getpid())
    assert not any(_process_exists(pid) for pid in (0, -1, -os.getpid(), 2**31, 2**63))


def test_results_that_cannot_be_written_are_an_error_of_the_pass_not_an_exception(tmp_path, caplog):
    """results.json replaced by a folder (or state_dir unsafe): the pass's snapshots were taken all the same;
    `once` must still print its report (it printed nothing, the exception went out of the pass)."""
    import logging
    from types import SimpleNamespace

    from vmsnapd.actions.status import RESULTS_FILE, record_results
    from vmsnapd.report import PassReport, TargetOutcome

    (tmp_path / RESULTS_FILE).mkdir()
    ctx = SimpleNamespace(dry_run=False, state_dir=tmp_path, now=lambda: NOW)
    report = PassReport(outcomes=[TargetOutcome(action="take", target="tank/a", datasets=["tank/a"],
                                                snapshots=["tank/a@autosnap_2026-11-29_02:00:00_hourly"])])
    with caplog.at_level(logging.ERROR):
        record_results(ctx, report)
    assert report.failed == 1 and f"cannot record this pass's results in {tmp_path / RESULTS_FILE}" in \
        report.errors[0], report.errors
    assert "cannot record" in caplog.text


def test_metrics_show_the_journal_problems():
    from vmsnapd.actions.status import HostStatus
    from vmsnapd.metrics import Metrics

    metrics = Metrics(process=False)
    metrics.set_status(HostStatus(journal_unreadable=["/x.json cannot be read: boom"]))
    text = metrics.render().decode()
    assert 'vmsnapd_journal_problems{kind="unreadable"} 1.0' in text
    assert 'vmsnapd_journal_problems{kind="interrupted"} 0.0' in text
