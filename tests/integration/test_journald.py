"""Logs in a real systemd-journald (standalone, as LAB-NOTES describe): a VM's cycle lines are found with
`journalctl VMSNAPD_DOMAIN=<vm>`, with the native fields and the right priorities.

journald is started only when none listens on the journal socket, and then stopped at the end of the module (only the
process this module started); one already running is used and left alone.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab]

SOCKET = Path("/run/systemd/journal/socket")
JOURNALD = "/lib/systemd/systemd-journald"
ONE_HOURLY = {"hourly": 1, "daily": 0, "monthly": 0}


def journal_listening() -> bool:
    """The socket file outlives a stopped journald: only a connect tells whether one listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(str(SOCKET))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def journald():
    started = None
    if not journal_listening():
        if not os.path.exists(JOURNALD):
            pytest.fail(f"{JOURNALD} missing (tests/lab/setup.sh installs systemd)")
        SOCKET.parent.mkdir(parents=True, exist_ok=True)
        started = subprocess.Popen([JOURNALD], start_new_session=True, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not journal_listening():
            if started.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"systemd-journald did not create {SOCKET} (exit {started.poll()})")
            time.sleep(0.1)
    yield
    if started is not None:
        started.send_signal(signal.SIGTERM)
        try:
            started.wait(timeout=10)
        except subprocess.TimeoutExpired:
            started.kill()
            started.wait()


def journal_entries(match: str, want: int, timeout: float = 30) -> list[dict]:
    """`journalctl MATCH -o json`, polled until at least `want` entries are there (journald writes lazily)."""
    deadline = time.monotonic() + timeout
    while True:
        proc = subprocess.run(["journalctl", "--no-pager", "-o", "json", match], capture_output=True, text=True)
        entries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        if len(entries) >= want or time.monotonic() > deadline:
            return entries
        time.sleep(0.5)


def test_cycle_lines_reach_the_journal_with_fields_and_priorities(lab, journald, dataset, vmsnapd_env, tmp_path):
    vm = lab.create_vm(dataset)
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name, "method": "overlay",
                                  "hooks": {"pre_snapshot": ["/bin/false"]}}
    # As under systemd: stderr is the journal stream (JOURNAL_STREAM names it), so "auto" picks the journal.
    stderr_file = tmp_path / "stderr"
    with open(stderr_file, "w") as err:
        st = os.fstat(err.fileno())
        stream = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "VMSNAPD_LOG_TARGET": "auto"}
        env.write()
        failed = subprocess.run(
            [os.sys.executable, "-m", "vmsnapd", "-c", str(env.config_path), "snapshot", dataset.name],
            stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, **stream}, timeout=300)
    assert failed.returncode == 1, failed.stdout
    assert "cycle" not in stderr_file.read_text(), "lines went to stderr, not to the journal"

    del env.datasets[dataset.name]["hooks"]
    env.run("snapshot", dataset.name, env={"VMSNAPD_LOG_TARGET": "journal"})
    (snapshot,) = lab.snapshot_names(dataset.name)

    entries = journal_entries(f"VMSNAPD_DOMAIN={vm.name}", want=2)
    assert entries and all(e["SYSLOG_IDENTIFIER"] == "vmsnapd" for e in entries)
    done = [e for e in entries if "cycle done" in e["MESSAGE"]]
    assert len(done) == 1, [e["MESSAGE"] for e in entries]
    done = done[0]
    assert done["PRIORITY"] == "5"  # NOTICE: normal life worth keeping
    assert done["VMSNAPD_DATASET"] == dataset.name
    assert done["VMSNAPD_SNAPSHOT"] == snapshot
    assert done["VMSNAPD_CYCLE"].startswith(f"{vm.name}-")
    assert int(done["VMSNAPD_PAUSE_MS"]) >= 0
    problems = [e for e in entries if "cycle failed" in e["MESSAGE"] or "pre_snapshot" in e["MESSAGE"]]
    assert problems and all(int(e["PRIORITY"]) <= 4 for e in problems), [(e["PRIORITY"], e["MESSAGE"])
                                                                         for e in problems]
    assert any(e["PRIORITY"] == "3" and "cycle failed" in e["MESSAGE"] for e in problems)
    # -v (the second run) adds INFO lines, at priority 6, still carrying the VM's fields.
    assert any(e["PRIORITY"] == "6" for e in entries)
    # The hook's own lines carry the cycle's fields too (set for the whole cycle, not line by line).
    assert any("hook pre_snapshot" in e["MESSAGE"] and e.get("VMSNAPD_DATASET") == dataset.name for e in entries)
    # Another VM's lines are not in this VM's query.
    assert all(e["VMSNAPD_DOMAIN"] == vm.name for e in entries)
