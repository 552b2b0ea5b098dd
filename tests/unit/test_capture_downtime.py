"""A live RAM capture runs with QEMU's migration downtime limit lowered to holdstill.CAPTURE_DOWNTIME_MS
(docs/how-it-works.md, "The capture's downtime"): recorded in the journal before it is lowered, put back after the
capture whatever happens, put back by `recover` after a crash, left alone where nothing is captured live. Against the
in-memory host of fakehost.py; the lab: tests/integration/test_cycle.py."""
from __future__ import annotations

import pytest

import vmsnapd.holdstill as holdstill
from fakehost import make_host
from vmsnapd.holdstill import CAPTURE_DOWNTIME_MS, capture_guard_s
from vmsnapd.hvtypes import HypervisorError


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    monkeypatch.setattr(holdstill, "COMMIT_RETRY_DELAY_S", 0.0)
    monkeypatch.setattr("os.fsync", lambda fd: None)


class Killed(BaseException):
    """vmsnapd killed at this point (kill -9): nothing after it runs."""


def _downtime(host) -> int:
    return host.hv.domains["web"].downtime_ms


@pytest.mark.parametrize("method, verb", [("overlay", "snapshot_external"), ("pause", "snapshot_manual")])
def test_a_live_capture_runs_at_the_lower_limit_and_puts_it_back(tmp_path, method, verb):
    host = make_host(tmp_path, policy={"method": method, "quiesce": "off"})
    seen = []
    host.hv.fail(verb, lambda: seen.append((_downtime(host), [r.downtime_limit_ms for r in host.records()])))

    outcome = host.cycle()

    assert outcome.ok, outcome.error
    assert seen == [(CAPTURE_DOWNTIME_MS, [300])]  # lowered during the capture, the old limit recorded first
    assert _downtime(host) == 300 and host.records() == []
    assert host.hv.verbs("set_migration_downtime") == [("set_migration_downtime", "web", CAPTURE_DOWNTIME_MS),
                                                       ("set_migration_downtime", "web", 300)]
    [guard] = host.hv.verbs("downtime_guard")
    assert guard == ("downtime_guard", "web", capture_guard_s(host.hv.domains["web"].memory), 300)


@pytest.mark.parametrize("policy", [{"live": False}, {"memory": False}, {"method": "pause", "live": False}])
def test_nothing_captured_live_leaves_the_limit_alone(tmp_path, policy):
    host = make_host(tmp_path, policy={"quiesce": "off", **policy})
    assert host.cycle().ok
    assert host.hv.verbs("set_migration_downtime", "downtime_guard") == []


def test_a_limit_already_as_low_is_left_alone(tmp_path):
    host = make_host(tmp_path, policy={"quiesce": "off"})
    host.hv.domains["web"].downtime_ms = 10  # the admin's
    assert host.cycle().ok
    assert host.hv.verbs("set_migration_downtime") == [] and _downtime(host) == 10


def test_a_failed_capture_puts_the_limit_back(tmp_path):
    host = make_host(tmp_path, policy={"quiesce": "off"})
    host.hv.fail("snapshot_external", HypervisorError("snapshot of web: internal error"))

    outcome = host.cycle()

    assert not outcome.ok and _downtime(host) == 300
    assert host.records() == [] and host.overlay_files() == []


def test_a_limit_that_cannot_be_lowered_changes_nothing_else(tmp_path):
    host = make_host(tmp_path, policy={"quiesce": "off"})
    host.hv.fail("set_migration_downtime", HypervisorError("Requested operation is not valid"))

    outcome = host.cycle()

    assert outcome.ok, outcome.error
    assert _downtime(host) == 300 and host.records() == []
    assert len(host.hv.verbs("set_migration_downtime")) == 1  # nothing to put back


def test_recover_puts_the_limit_back_after_a_crash_during_the_capture(tmp_path):
    host = make_host(tmp_path, policy={"quiesce": "off"})
    host.hv.fail("set_migration_downtime", None, Killed())  # killed before the limit went back
    with pytest.raises(Killed):
        host.cycle()
    [record] = host.records()
    assert record.downtime_limit_ms == 300 and _downtime(host) == CAPTURE_DOWNTIME_MS

    report = host.recover()

    assert report.errors == [], report.errors
    assert _downtime(host) == 300 and host.records() == []
    assert any("downtime limit of web back to 300 ms" in a for a in report.actions), report.actions


def test_a_limit_not_put_back_keeps_the_record_for_recover(tmp_path):
    host = make_host(tmp_path, policy={"quiesce": "off"})
    host.hv.fail("set_migration_downtime", None, HypervisorError("connection reset"))

    outcome = host.cycle()

    assert outcome.ok, outcome.error  # the snapshot and the dump are good
    assert any("not put back to 300 ms" in w for w in outcome.warnings), outcome.warnings
    [record] = host.records()
    assert record.downtime_limit_ms == 300 and record.overlays == []
    assert host.recover().errors == []
    assert _downtime(host) == 300 and host.records() == []


def test_recover_leaves_a_stopped_domain_alone(tmp_path):
    host = make_host(tmp_path, policy={"quiesce": "off"})
    host.hv.fail("set_migration_downtime", None, Killed())
    with pytest.raises(Killed):
        host.cycle()
    host.hv.shut_off("web")
    before = len(host.hv.verbs("set_migration_downtime"))

    assert host.recover().errors == []
    assert host.records() == [] and len(host.hv.verbs("set_migration_downtime")) == before


def test_the_guard_grows_with_the_guest():
    assert capture_guard_s(0) == holdstill.CAPTURE_GUARD_S
    assert capture_guard_s(64 << 30) > capture_guard_s(1 << 30) > capture_guard_s(0)
