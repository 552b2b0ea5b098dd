"""Hooks: sanoid's environment, verbatim argv, timeouts that kill the whole group, dry run."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import pytest

from vmsnapd.hooks import HookEnv, base_environment, run_hook

DATASET = "rpool/VM/win"
NAMES = ["autosnap_2026-11-29_01:00:00_hourly", "autosnap_2026-11-29_01:00:00_daily"]


def write_script(tmp_path: Path, name: str, body: str) -> Path:
    script = tmp_path / name
    script.write_text(f"#!{sys.executable}\n{body}")
    script.chmod(0o755)
    return script


@pytest.fixture
def dump_hook(tmp_path: Path) -> tuple[Path, Path]:
    """A hook that writes its argv and environment as JSON to a file; returns (script, output)."""
    output = tmp_path / "seen.json"
    script = write_script(
        tmp_path,
        "dump.py",
        "import json, os, sys\n"
        f"open({str(output)!r}, 'w').write(json.dumps({{'argv': sys.argv[1:], 'env': dict(os.environ)}}))\n",
    )
    return script, output


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def wait_gone(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_pre_snapshot_environment_matches_sanoid(dump_hook: tuple[Path, Path]) -> None:
    script, output = dump_hook
    env = HookEnv(phase="pre_snapshot", datasets=[DATASET], snapshot_names=NAMES, domain="win")
    result = run_hook([str(script)], env, timeout=10, dry_run=False, log_context=DATASET, parent_env={})
    assert result.ok and result.returncode == 0 and not result.timed_out
    seen = json.loads(output.read_text())["env"]
    # Values as sanoid 2.1 sets them: longest period first (proven against sanoid: tests/sanoid_oracle/test_hook_env.py).
    assert seen["SANOID_SCRIPT"] == "pre"
    assert seen["SANOID_TARGET"] == DATASET
    assert seen["SANOID_TARGETS"] == DATASET
    assert seen["SANOID_SNAPNAME"] == "autosnap_2026-11-29_01:00:00_daily"
    assert seen["SANOID_SNAPNAMES"] == "autosnap_2026-11-29_01:00:00_daily,autosnap_2026-11-29_01:00:00_hourly"
    assert seen["SANOID_TYPES"] == "daily,hourly"
    assert "SANOID_PRE_FAILURE" not in seen
    assert seen["VMSNAPD_PHASE"] == "pre_snapshot"
    assert seen["VMSNAPD_DATASET"] == DATASET
    assert seen["VMSNAPD_DOMAIN"] == "win"
    assert seen["VMSNAPD_SNAPSHOT"] == f"{DATASET}@autosnap_2026-11-29_01:00:00_daily"
    assert seen["VMSNAPD_RAM_DUMP"] == ""
    assert seen["VMSNAPD_DRY_RUN"] == "0"


def test_post_snapshot_environment_has_pre_failure_and_ram_dump(dump_hook: tuple[Path, Path]) -> None:
    script, output = dump_hook
    dump = "/var/lib/vmsnapd/ram/win/win_2026-11-29_01:00:00.mem.zst"
    for pre_failure, expected in ((False, "0"), (True, "1")):
        env = HookEnv(
            phase="post_snapshot",
            datasets=[DATASET, "rpool/VM/win-data"],
            snapshot_names=NAMES[:1],
            domain="win",
            ram_dump=dump,
            pre_failure=pre_failure,
        )
        assert run_hook([str(script)], env, timeout=10, dry_run=False, log_context=DATASET).ok
        seen = json.loads(output.read_text())["env"]
        assert seen["SANOID_SCRIPT"] == "post"
        assert seen["SANOID_PRE_FAILURE"] == expected
        assert seen["SANOID_TARGETS"] == f"{DATASET},rpool/VM/win-data"
        assert seen["SANOID_TARGET"] == DATASET
        assert seen["SANOID_TYPES"] == "hourly"
        assert seen["SANOID_SNAPNAME"] == f"{DATASET}@{NAMES[0]}"  # sanoid's post script sees the full name
        assert seen["VMSNAPD_RAM_DUMP"] == dump


def test_post_prune_environment_lists_destroyed_and_dumps(dump_hook: tuple[Path, Path]) -> None:
    script, output = dump_hook
    destroyed = [f"{DATASET}@{name}" for name in NAMES] + ["rpool/VM/with space@autosnap_2026-11-29_01:00:00_hourly"]
    dumps = ["/ram/win/win_2026-11-29_01:00:00.mem", "/ram/a,b/a,b_2026-11-29_01:00:00.mem"]
    env = HookEnv(
        phase="post_prune", datasets=[DATASET], snapshot_names=NAMES, destroyed=destroyed, dumps_deleted=dumps
    )
    assert run_hook([str(script)], env, timeout=10, dry_run=False, log_context=DATASET).ok
    seen = json.loads(output.read_text())["env"]
    assert seen["SANOID_SCRIPT"] == "prune"
    assert seen["SANOID_TARGET"] == DATASET
    assert seen["SANOID_SNAPNAME"] == NAMES[0]
    assert seen["VMSNAPD_PHASE"] == "post_prune"
    assert seen["VMSNAPD_DESTROYED"].split("\n") == destroyed
    assert seen["VMSNAPD_DUMPS_DELETED"].split("\n") == dumps
    assert "SANOID_PRE_FAILURE" not in seen


def test_minimal_base_environment() -> None:
    parent = {"PATH": "/custom/bin", "HOME": "/root", "NOTIFY_SOCKET": "/run/systemd/notify", "SECRET": "x"}
    assert base_environment(parent) == {"PATH": "/custom/bin", "HOME": "/root"}
    assert base_environment({})["PATH"].startswith("/usr/local/sbin")


def test_hook_does_not_inherit_daemon_secrets(dump_hook: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    script, output = dump_hook
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    env = HookEnv(phase="pre_prune", datasets=[DATASET], snapshot_names=NAMES[:1])
    assert run_hook([str(script)], env, timeout=10, dry_run=False, log_context=DATASET).ok
    seen = json.loads(output.read_text())["env"]
    assert "NOTIFY_SOCKET" not in seen
    assert "PATH" in seen


def test_arguments_reach_the_hook_verbatim(dump_hook: tuple[Path, Path]) -> None:
    script, output = dump_hook
    args = ["with spaces", "'single' \"double\"", "$(touch /tmp/pwned)", "`id`", "$HOME", "a;b|c&&d", "", "*"]
    env = HookEnv(phase="pre_snapshot", datasets=[DATASET], snapshot_names=NAMES)
    assert run_hook([str(script), *args], env, timeout=10, dry_run=False, log_context=DATASET).ok
    assert json.loads(output.read_text())["argv"] == args


def test_output_is_logged_line_by_line_with_the_dataset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    script = write_script(
        tmp_path,
        "talk.py",
        "import sys\nprint('first line'); print('second line')\n"
        "sys.stderr.write('trouble ahead\\n'); sys.stdout.write('no newline at end')\n",
    )
    env = HookEnv(phase="pre_snapshot", datasets=[DATASET], snapshot_names=NAMES)
    with caplog.at_level(logging.INFO, logger="vmsnapd.hooks"):
        assert run_hook([str(script)], env, timeout=10, dry_run=False, log_context=DATASET).ok
    stdout_lines = [r for r in caplog.records if "stdout:" in r.getMessage()]
    assert [r.getMessage().split("stdout: ")[1] for r in stdout_lines] == [
        "first line",
        "second line",
        "no newline at end",
    ]
    assert all(r.levelno == logging.INFO and DATASET in r.getMessage() for r in stdout_lines)
    [stderr_line] = [r for r in caplog.records if "stderr:" in r.getMessage()]
    assert stderr_line.levelno == logging.WARNING
    assert stderr_line.getMessage().endswith("trouble ahead")


def test_failing_hook_reports_its_exit_status(tmp_path: Path) -> None:
    script = write_script(tmp_path, "fail.py", "import sys\nsys.exit(3)\n")
    env = HookEnv(phase="pre_snapshot", datasets=[DATASET], snapshot_names=NAMES)
    result = run_hook([str(script)], env, timeout=10, dry_run=False, log_context=DATASET)
    assert not result.ok
    assert result.returncode == 3
    assert not result.timed_out
    assert result.error == "exit status 3"


def test_missing_executable_is_a_failure_not_an_exception(tmp_path: Path) -> None:
    env = HookEnv(phase="pre_snapshot", datasets=[DATASET], snapshot_names=NAMES)
    result = run_hook([str(tmp_path / "nope")], env, timeout=10, dry_run=False, log_context=DATASET)
    assert not result.ok and result.returncode is None
    assert "cannot execute" in (result.error or "")


def test_timeout_kills_the_hook_and_its_children(tmp_path: Path) -> None:
    child_pid_file = tmp_path / "child.pid"
    script = write_script(
        tmp_path,
        "slow.py",
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(child_pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(300)\n",
    )
    env = HookEnv(phase="pre_snapshot", datasets=[DATASET], snapshot_names=NAMES)
    started = time.monotonic()
    result = run_hook([str(script)], env, timeout=1.0, dry_run=False, log_context=DATASET)
    assert time.monotonic() - started < 6
    assert not result.ok and result.timed_out
    assert result.returncode == -9
    assert wait_gone(int(child_pid_file.read_text()))


def test_timeout_applies_after_the_hook_closes_its_output(tmp_path: Path) -> None:
    script = write_script(tmp_path, "quiet.py", "import os, time\nos.close(1); os.close(2)\ntime.sleep(300)\n")
    env = HookEnv(phase="pre_snapshot", datasets=[DATASET], snapshot_names=NAMES)
    started = time.monotonic()
    result = run_hook([str(script)], env, timeout=1.0, dry_run=False, log_context=DATASET)
    assert time.monotonic() - started < 6
    assert result.timed_out and not result.ok


def test_hook_leaving_a_sleeping_child_does_not_hang(tmp_path: Path) -> None:
    child_pid_file = tmp_path / "child.pid"
    # The background child inherits stdout/stderr: without care, reading until EOF would wait 300 s.
    script = write_script(
        tmp_path,
        "fork.py",
        "import subprocess\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(child_pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('started a child and left')\n",
    )
    env = HookEnv(phase="post_snapshot", datasets=[DATASET], snapshot_names=NAMES)
    started = time.monotonic()
    result = run_hook([str(script)], env, timeout=30, dry_run=False, log_context=DATASET)
    assert time.monotonic() - started < 5
    assert result.ok and result.returncode == 0 and not result.timed_out
    assert wait_gone(int(child_pid_file.read_text()))


def test_child_in_its_own_session_holding_the_pipes_does_not_hang(tmp_path: Path) -> None:
    child_pid_file = tmp_path / "child.pid"
    script = write_script(
        tmp_path,
        "daemonize.py",
        "import subprocess\n"
        "child = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        f"open({str(child_pid_file)!r}, 'w').write(str(child.pid))\n",
    )
    env = HookEnv(phase="post_snapshot", datasets=[DATASET], snapshot_names=NAMES)
    started = time.monotonic()
    try:
        result = run_hook([str(script)], env, timeout=30, dry_run=False, log_context=DATASET)
        assert time.monotonic() - started < 6
        assert result.ok
    finally:
        os.kill(int(child_pid_file.read_text()), 9)


def test_dry_run_does_not_run_the_hook(dump_hook: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    script, output = dump_hook
    env = HookEnv(phase="pre_snapshot", datasets=[DATASET], snapshot_names=NAMES)
    with caplog.at_level(logging.INFO, logger="vmsnapd.hooks"):
        result = run_hook([str(script)], env, timeout=10, dry_run=True, log_context=DATASET)
    assert result.ok and result.skipped_dry_run and result.returncode is None
    assert not output.exists()
    assert "dry-run: would run hook pre_snapshot" in caplog.text


def test_empty_argv_is_a_programming_error() -> None:
    env = HookEnv(phase="pre_snapshot", datasets=[DATASET], snapshot_names=NAMES)
    with pytest.raises(ValueError):
        run_hook([], env, timeout=10, dry_run=False, log_context=DATASET)
