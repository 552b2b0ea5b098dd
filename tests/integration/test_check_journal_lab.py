"""`vmsnapd check` and `status` with an odd crash journal on the lab (trust drill; pure side:
tests/unit/test_check_journal.py): a record recover cannot read or a cycle crashed and not recovered is CRITICAL
(it was OK while `once` exited 1 on it), an empty journal folder changes nothing, and removing the record clears it."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.nagios_output import parse
from vmsnapd.journal import cycle_file_name

pytestmark = [pytest.mark.lab]


def test_check_sees_what_recover_cannot_finish(lab, dataset, vmsnapd_env):
    env = vmsnapd_env
    env.datasets[dataset.name] = {"hourly": 1, "daily": 0, "monthly": 0, "domain": "none"}
    env.run("once")
    cycles = env.state_dir / "cycles"
    cycles.mkdir(mode=0o700, exist_ok=True)  # an empty journal folder: nothing to say
    assert parse(env.run("check", expect=0).stdout, 0).text.startswith("VMSNAPD OK - ")

    (cycles / "garbage.json").write_text("{not json")
    assert env.run("once", expect=1).returncode == 1  # recover fails on the unreadable record, every pass
    proc = env.run("check", expect=2)
    out = parse(proc.stdout, proc.returncode)
    assert f"journal record {cycles}/garbage.json cannot be read" in out.text, out.text
    assert "garbage.json cannot be read" in env.run("status").stdout
    (cycles / "garbage.json").unlink()

    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that no longer runs
    cycle_id = f"{dataset.name}-2026-01-01_00:00:00"
    (cycles / cycle_file_name(cycle_id)).write_text(json.dumps({
        "cycle_id": cycle_id, "domain": None, "datasets": [dataset.name],
        "snapshot_names": [], "stamp": "2026-01-01_00:00:00", "method": "plain", "state": "snapshotted",
        "pid": gone.pid, "updated_at": "2026-01-01T00:00:00.000+00:00"}))
    proc = env.run("check", expect=2)
    assert f"cycle {cycle_id} interrupted in state snapshotted" in proc.stdout, proc.stdout
    assert f"journal: cycle {cycle_id} interrupted" in env.run("status").stdout
    env.run("recover")  # a plain cycle past its snapshot: recover closes it
    assert parse(env.run("check", expect=0).stdout, 0).text.startswith("VMSNAPD OK - ")


def test_a_results_file_that_cannot_be_written_still_shows_the_pass(lab, dataset, vmsnapd_env):
    """results.json replaced by a folder: `once` took its snapshot, prints it, and exits 1 naming the file (it
    printed nothing and ended on the OSError; the daemon logged a traceback as a crashed pass)."""
    env = vmsnapd_env
    env.datasets[dataset.name] = {"hourly": 1, "daily": 0, "monthly": 0, "domain": "none"}
    env.state_dir.mkdir(mode=0o700)
    (env.state_dir / "results.json").mkdir()
    proc = env.run("once", expect=1)
    assert "took autosnap_" in proc.stdout and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert f"cannot record this pass's results in {env.state_dir}/results.json" in proc.stderr, proc.stderr
    assert len(lab.snapshot_names(dataset)) == 1
