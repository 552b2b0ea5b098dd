"""A hook that prints a flood (a `set -x` script, `rsync -v` of a big tree: hundreds of thousands of lines) — drill,
session 19. Every line became a log record: journald's per-service rate limit (10000 messages in 30 s by default)
then drops vmsnapd's *own* messages too — the failed cycles of other VMs of the pass, the pass summary. Now the
first lines and the last ones of each stream are logged (the start says what the hook did, the end usually why it
failed), and one warning counts what was left out."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from vmsnapd.hooks import HEAD_LINES, TAIL_LINES, HookEnv, run_hook

DATASET = "rpool/VM/chatty"
NAMES = ["autosnap_2026-11-29_01:00:00_hourly"]


def _hook(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "hook.py"
    script.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
    script.chmod(0o755)
    return script


def _lines(caplog, stream: str) -> list[str]:
    return [r.getMessage().split(f"{stream}: ", 1)[1] for r in caplog.records if f"] {stream}: " in r.getMessage()]


def test_a_flood_logs_its_head_and_tail_and_counts_the_rest(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    hook = _hook(tmp_path, "for i in range(200000):\n    print(f'line {i}')\n"
                           "for i in range(30000):\n    sys.stderr.write(f'err {i}\\n')\n")
    env = HookEnv(phase="pre_snapshot", datasets=[DATASET], snapshot_names=NAMES)

    with caplog.at_level(logging.INFO, logger="vmsnapd.hooks"):
        assert run_hook([str(hook)], env, timeout=120, dry_run=False, log_context=DATASET).ok

    out, err = _lines(caplog, "stdout"), _lines(caplog, "stderr")
    assert out == [f"line {i}" for i in range(HEAD_LINES)] + [f"line {i}" for i in range(200000 - TAIL_LINES, 200000)]
    assert err == [f"err {i}" for i in range(HEAD_LINES)] + [f"err {i}" for i in range(30000 - TAIL_LINES, 30000)]
    notes = [r for r in caplog.records if "not logged" in r.getMessage()]
    assert len(notes) == 2 and all(r.levelno == logging.WARNING for r in notes)
    skipped_out = 200000 - HEAD_LINES - TAIL_LINES
    assert any(f"{skipped_out} lines of stdout" in r.getMessage() and DATASET in r.getMessage() for r in notes), \
        [r.getMessage() for r in notes]
    assert len(caplog.records) < 4 * (HEAD_LINES + TAIL_LINES) + 10


def test_a_hook_within_the_budget_is_logged_whole(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    count = HEAD_LINES + TAIL_LINES
    hook = _hook(tmp_path, f"for i in range({count}):\n    print(f'line {{i}}')\n")
    env = HookEnv(phase="post_snapshot", datasets=[DATASET], snapshot_names=NAMES)

    with caplog.at_level(logging.INFO, logger="vmsnapd.hooks"):
        assert run_hook([str(hook)], env, timeout=60, dry_run=False, log_context=DATASET).ok

    assert _lines(caplog, "stdout") == [f"line {i}" for i in range(count)]
    assert "not logged" not in caplog.text
