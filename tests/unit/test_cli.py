"""The command line's plumbing: global options anywhere, help for every option, exit codes, --json, a closed pipe."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmsnapd import cli

ROOT = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


@pytest.mark.parametrize("argv, config, debug, lock_wait", [
    (["once"], cli.DEFAULT_CONFIG, False, cli.LOCK_WAIT_S),
    (["-c", "/a.toml", "once"], "/a.toml", False, cli.LOCK_WAIT_S),
    (["once", "-c", "/b.toml", "--debug", "--lock-wait", "5"], "/b.toml", True, 5.0),
    (["-c", "/a.toml", "--debug", "once", "--config", "/b.toml"], "/b.toml", True, cli.LOCK_WAIT_S),
    (["config", "check", "-c", "/c.toml"], "/c.toml", False, cli.LOCK_WAIT_S),
    (["-c", "/a.toml", "restore", "vm", "snap", "-v"], "/a.toml", False, cli.LOCK_WAIT_S),
])
def test_global_options_before_or_after_the_command(argv, config, debug, lock_wait):
    args = parse(*argv)
    assert (args.config, args.debug, args.lock_wait) == (config, debug, lock_wait)


def test_verbose_after_the_command():
    assert parse("once", "-v").verbose and not parse("once").verbose


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_every_option_and_argument_has_help_text():
    missing = [f"{p.prog}: {a.dest}" for p in _all_parsers(cli.build_parser()) for a in p._actions
               if not isinstance(a, argparse._SubParsersAction) and not a.help]
    assert not missing, missing


@pytest.mark.parametrize("command", [["once"], ["snapshot", "x"], ["check"], ["config", "check"], ["recover"],
                                     ["restore", "vm", "snap"], ["status"], ["list"]])
def test_every_reporting_command_has_json(command):
    assert parse(*command, "--json").json is True


def test_exit_codes_are_documented():
    doc = (ROOT / "docs" / "cli.md").read_text()
    for code in (cli.EX_OK, cli.EX_FAILED, cli.EX_USAGE, cli.EX_PLAN_ONLY, cli.EX_CONFIG, cli.EX_BROKEN_PIPE):
        assert f"| {code} |" in doc
        assert f"{code} " in cli.EXIT_CODES_HELP


def test_invalid_config_given_after_the_command_exits_78(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[daemon]\nno_such_key = 1\n')
    bad.chmod(0o600)
    assert cli.main(["config", "check", "-c", str(bad)]) == cli.EX_CONFIG
    assert "no_such_key" in capsys.readouterr().err


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "vmsnapd.toml"
    path.write_text(f'[daemon]\nstate_dir = "{tmp_path}/state"\n[datasets."tank/vm"]\nhourly = 2\n')
    path.chmod(0o600)
    return path


def test_restore_plan_without_yes_exits_plan_only_and_does_nothing(tmp_path, capsys, monkeypatch):
    """The restore engine is replaced by a plan-only fake: this checks the CLI's exit code and output, the lab
    tests (tests/integration/test_restore.py) check the real plan."""
    from vmsnapd.actions import restore

    plan = restore.RestorePlan(domain="vm", datasets=["tank/vm"], snapshot="autosnap_x_hourly",
                               steps=["stop vm", "roll back tank/vm"])
    monkeypatch.setattr(restore, "plan_restore", lambda *a, **k: plan)

    def must_not_run(*a, **k):
        raise AssertionError("restore carried out without --yes")

    monkeypatch.setattr(restore, "execute_restore", must_not_run)
    config = _config(tmp_path)
    assert cli.main(["restore", "vm", "autosnap_x_hourly", "-c", str(config)]) == cli.EX_PLAN_ONLY
    out = capsys.readouterr()
    assert "roll back tank/vm" in out.out and "nothing done" in out.err
    assert cli.main(["restore", "vm", "autosnap_x_hourly", "-c", str(config), "--json"]) == cli.EX_PLAN_ONLY
    data = json.loads(capsys.readouterr().out)
    assert data["carried_out"] is False and data["plan"]["steps"] == ["stop vm", "roll back tank/vm"]


class ClosedPipe:
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        return self._fd

    def __init__(self, fd: int):
        self._fd = fd


def test_closed_stdout_in_process_is_quiet(tmp_path, capsys, monkeypatch):
    sanoid = tmp_path / "sanoid.conf"
    sanoid.write_text("[tank/a]\n\thourly = 3\n")
    with open(tmp_path / "sink", "w") as sink:
        monkeypatch.setattr(sys, "stdout", ClosedPipe(sink.fileno()))
        assert cli.main(["import-sanoid", str(sanoid)]) == cli.EX_BROKEN_PIPE
    assert capsys.readouterr().err == ""


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
    """stdout is a pipe whose reader is already gone: every write fails with EPIPE, deterministically."""
    sanoid = tmp_path / "sanoid.conf"
    sanoid.write_text("[template_production]\n\thourly = 36\n[tank/vm]\n\tuse_template = production\n")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "vmsnapd", "import-sanoid", str(sanoid)], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == cli.EX_BROKEN_PIPE and proc.stderr == "", proc.stderr


def test_piping_into_head_prints_no_broken_pipe(tmp_path):
    """The user's view: `vmsnapd … | head -1` shows one line and nothing on stderr, however the race between the
    writer and head's exit goes (exit 0 when everything fit in the pipe first, 141 when not)."""
    sanoid = tmp_path / "sanoid.conf"
    sanoid.write_text("[template_production]\n\thourly = 36\n" + "".join(
        f"[tank/vm{i}]\n\tuse_template = production\n\thourly = {i}\n" for i in range(3000)))
    config = _config(tmp_path)
    for command in (f"import-sanoid {sanoid}", f"-c {config} config check"):
        proc = subprocess.run(
            f"{sys.executable} -m vmsnapd {command} | head -1; echo \"status=${{PIPESTATUS[0]}}\"",
            shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120)
        lines = proc.stdout.splitlines()
        assert len(lines) == 2 and lines[1] in ("status=0", f"status={cli.EX_BROKEN_PIPE}"), proc.stdout[-500:]
        assert proc.stderr == "", proc.stderr


def test_config_check_json(tmp_path, capsys):
    assert cli.main(["config", "check", "--json", "-c", str(_config(tmp_path))]) == cli.EX_OK
    data = json.loads(capsys.readouterr().out)
    assert data["valid"] is True and isinstance(data["datasets"], dict)


def test_log_level_default_is_notice_for_the_daemon_warning_for_commands():
    import logging

    from vmsnapd.logsetup import NOTICE

    assert cli._log_level(parse("run")) == NOTICE
    assert cli._log_level(parse("once")) == logging.WARNING
    assert cli._log_level(parse("once", "-v")) == logging.INFO
    assert cli._log_level(parse("run", "--debug")) == logging.DEBUG


def test_the_unit_does_not_need_verbose():
    """Normal life is NOTICE, which the daemon logs by default: the unit runs without -v/--verbose."""
    unit = (ROOT / "systemd" / "vmsnapd.service").read_text()
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert exec_start.split()[-1] == "run" and "--verbose" not in exec_start and " -v" not in exec_start
