"""Running the `pre_snapshot`, `post_snapshot`, `pre_prune` and `post_prune` hooks.

A hook is an argv list executed directly (never through a shell: an argument with spaces, quotes or
`$(…)` reaches the hook verbatim), in its own session, with a minimal environment, stdin from
/dev/null, its stdout logged at INFO and its stderr at WARNING line by line with the dataset — per stream the
first HEAD_LINES lines and the last TAIL_LINES, with one warning counting the lines between (a flood would make
journald's rate limit drop vmsnapd's own messages).

Timeout and children: past its timeout the hook's whole process group is killed (SIGKILL), children
included. A hook's process group does not outlive the hook either: when the hook exits, whatever it
left running in its group is killed, so a forgotten `sleep &` can neither hold our output pipes open
nor pile up across passes. A hook that really wants to start something long-lived must start it in a
session of its own (`setsid`, `systemd-run`); we then stop reading its output after a short grace.

Environment. sanoid's variables, with sanoid's values (sanoid 2.1.0, `take_snapshots` and
`prune_snapshots` in /usr/sbin/sanoid; README "Sanoid script hooks"):

- `SANOID_SCRIPT`: `pre` (pre_snapshot), `post` (post_snapshot), `prune` (pre_prune and post_prune;
  sanoid has only a pruning_script, run after each successful destroy).
- `SANOID_TARGETS`: comma-separated datasets; `SANOID_TARGET`: the first of them (deprecated in sanoid).
- `SANOID_SNAPNAMES`: comma-separated snapshot names *without* the dataset, longest period first as sanoid
  takes them (`autosnap_2026-11-29_01:00:00_daily,autosnap_2026-11-29_01:00:00_hourly`); `SANOID_SNAPNAME`: the
  first — in post_snapshot *with* the dataset (`tank/web@autosnap_…_daily`): sanoid's loop that takes the
  snapshots rewrites its list in place before the post script runs, and scripts written for sanoid see that.
- `SANOID_TYPES`: comma-separated periods, in the order of the names (`daily,hourly`).

Checked against Debian's sanoid itself, same tree and instant: tests/sanoid_oracle/test_hook_env.py.
- `SANOID_PRE_FAILURE`: post_snapshot only, always set, `0` or `1` (1: the pre hook failed and the
  snapshot went ahead under `pre_snapshot_failure = "continue"`). sanoid never sets it elsewhere.

sanoid's prune script sees only SANOID_SCRIPT, SANOID_TARGET and SANOID_SNAPNAME; we also set
TARGETS/SNAPNAMES/TYPES for prune hooks (a superset, harmless to sanoid scripts). A sanoid
pruning_script expects one call per destroyed snapshot: that is how `pre_prune` is called (its exit
status decides that snapshot's fate); `post_prune` is called once per dataset per pass.

vmsnapd's own variables, always all set (empty when not applicable, so `set -u` scripts work):

- `VMSNAPD_PHASE`: `pre_snapshot` | `post_snapshot` | `pre_prune` | `post_prune`.
- `VMSNAPD_DATASET`: the (first) dataset; `VMSNAPD_DOMAIN`: the libvirt domain, or empty.
- `VMSNAPD_SNAPSHOT`: the full name `dataset@name` of the first snapshot concerned.
- `VMSNAPD_RAM_DUMP`: absolute path of the cycle's RAM dump (post_snapshot), or empty.
- `VMSNAPD_DRY_RUN`: always `0`: hooks never run in dry run (the pass logs "dry-run: would run hook").
- `VMSNAPD_DESTROYED` (post_prune): the destroyed snapshots, full `dataset@name`, one per line.
- `VMSNAPD_DUMPS_DELETED` (post_prune): absolute paths of the RAM dumps deleted, one per line.
  Newlines, not commas: ZFS names may contain spaces and paths may contain commas, neither has newlines.
"""

from __future__ import annotations

import logging
import os
import selectors
import subprocess
import time
from collections import deque
from typing import Callable, Literal, Mapping

from pydantic import BaseModel

from vmsnapd.metrics import hook_killed
from vmsnapd.runner import kill_process_group

log = logging.getLogger(__name__)

HookPhase = Literal["pre_snapshot", "post_snapshot", "pre_prune", "post_prune"]

SANOID_SCRIPT_BY_PHASE: dict[str, str] = {
    "pre_snapshot": "pre",
    "post_snapshot": "post",
    "pre_prune": "prune",
    "post_prune": "prune",
}

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Only these are passed on from the daemon's own environment: a hook must not inherit e.g.
# NOTIFY_SOCKET (it could speak sd_notify for the daemon) or credentials meant for vmsnapd.
INHERITED_VARIABLES = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME")
# After the hook exits: how long its output may still trickle in from processes outside its group.
OUTPUT_DRAIN_GRACE_S = 2.0
READ_CHUNK = 65536
# A "line" without a newline is still logged once it gets this long, so memory stays bounded.
MAX_LINE_BYTES = 16384
# Per stream and hook run: the first HEAD_LINES lines are logged as they come, the last TAIL_LINES at the end, and
# one warning counts the lines between. A flood (a `set -x` script, `rsync -v`) would otherwise make journald's
# per-service rate limit drop vmsnapd's own messages too (docs/pruning.md, "Hooks").
HEAD_LINES = 200
TAIL_LINES = 50


# The order sanoid's take_snapshots goes through the periods, and so the order of its names and types.
SANOID_PERIOD_ORDER = ("yearly", "monthly", "weekly", "daily", "hourly", "frequently")


def _period(name: str) -> str:
    # autosnap_YYYY-MM-DD_HH:MM:SS_<period>: the period is the part after the last underscore.
    return name.rsplit("_", 1)[-1]


def _sanoid_order(names: list[str]) -> list[str]:
    rank = {period: index for index, period in enumerate(SANOID_PERIOD_ORDER)}
    return sorted(names, key=lambda name: rank.get(_period(name), len(rank)))


class HookEnv(BaseModel):
    """What a hook is told about the cycle or prune it runs for; `variables()` is the environment."""

    phase: HookPhase
    datasets: list[str]
    snapshot_names: list[str]
    domain: str | None = None
    ram_dump: str | None = None
    pre_failure: bool = False
    destroyed: list[str] = []
    dumps_deleted: list[str] = []

    def names(self) -> list[str]:
        """The snapshot names in sanoid's order: longest period first for a snapshot hook, as given for a prune."""
        snapshot_hook = self.phase in ("pre_snapshot", "post_snapshot")
        return _sanoid_order(self.snapshot_names) if snapshot_hook else list(self.snapshot_names)

    def variables(self) -> dict[str, str]:
        names = self.names()
        first_dataset = self.datasets[0] if self.datasets else ""
        first_name = names[0] if names else ""
        full_first = f"{first_dataset}@{first_name}" if first_dataset and first_name else ""
        env = {
            "SANOID_SCRIPT": SANOID_SCRIPT_BY_PHASE[self.phase],
            "SANOID_TARGET": first_dataset,
            "SANOID_TARGETS": ",".join(self.datasets),
            "SANOID_SNAPNAME": full_first if self.phase == "post_snapshot" else first_name,
            "SANOID_SNAPNAMES": ",".join(names),
            "SANOID_TYPES": ",".join(_period(name) for name in names),
            "VMSNAPD_PHASE": self.phase,
            "VMSNAPD_DATASET": first_dataset,
            "VMSNAPD_DOMAIN": self.domain or "",
            "VMSNAPD_SNAPSHOT": full_first,
            "VMSNAPD_RAM_DUMP": self.ram_dump or "",
            # A hook only ever runs outside dry run (see run_hook).
            "VMSNAPD_DRY_RUN": "0",
            "VMSNAPD_DESTROYED": "\n".join(self.destroyed),
            "VMSNAPD_DUMPS_DELETED": "\n".join(self.dumps_deleted),
        }
        if self.phase == "post_snapshot":
            env["SANOID_PRE_FAILURE"] = "1" if self.pre_failure else "0"
        return env


class HookResult(BaseModel):
    ok: bool
    returncode: int | None  # None: not run (dry run, or the executable could not be started)
    timed_out: bool = False
    duration_ms: int = 0
    skipped_dry_run: bool = False
    error: str | None = None


def base_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """The minimal environment every hook starts from, taken from the daemon's `parent` environment."""
    env = {name: parent[name] for name in INHERITED_VARIABLES if parent.get(name)}
    env.setdefault("PATH", DEFAULT_PATH)
    return env


def run_hook(
    argv: list[str],
    hook_env: HookEnv,
    timeout: float,
    dry_run: bool,
    log_context: str,
    parent_env: Mapping[str, str] | None = None,
) -> HookResult:
    """Run one hook and report how it went; never raises for the hook's own failure.

    Not through `Runner.run`: that collects output with `communicate()`, which cannot log lines as
    they come and blocks until every holder of the pipes exits (a hook's forked child), so a hook
    that exited fine would look timed out.
    """
    phase = hook_env.phase
    if not argv:
        raise ValueError(f"hook {phase} for {log_context}: empty argv")
    if dry_run:
        log.info("dry-run: would run hook %s for %s: %s", phase, log_context, argv)
        return HookResult(ok=True, returncode=None, skipped_dry_run=True)
    env = base_environment(os.environ if parent_env is None else parent_env)
    env.update(hook_env.variables())
    log.info("hook %s for %s: running %s (timeout %ss)", phase, log_context, argv, timeout)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd="/",
            start_new_session=True,
        )
    except OSError as exc:
        message = f"cannot execute {argv[0]}: {exc.strerror or exc}"
        log.error("hook %s for %s failed: %s", phase, log_context, message)
        return HookResult(ok=False, returncode=None, error=message)

    def log_stdout(line: str) -> None:
        log.info("hook %s [%s] stdout: %s", phase, log_context, line)

    def log_stderr(line: str) -> None:
        log.warning("hook %s [%s] stderr: %s", phase, log_context, line)

    stdout = _Budget(log_stdout, f"hook {phase} [{log_context}]", "stdout")
    stderr = _Budget(log_stderr, f"hook {phase} [{log_context}]", "stderr")
    timed_out = _follow(proc, timeout, {proc.stdout.fileno(): stdout, proc.stderr.fileno(): stderr})
    stdout.close()
    stderr.close()
    proc.stdout.close()
    proc.stderr.close()
    returncode = proc.wait()
    duration_ms = int((time.monotonic() - started) * 1000)
    if timed_out:
        message = f"killed after {timeout}s timeout (with its process group)"
        log.error("hook %s for %s %s", phase, log_context, message)
        hook_killed(log_context)
        return HookResult(ok=False, returncode=returncode, timed_out=True, duration_ms=duration_ms, error=message)
    if returncode != 0:
        message = f"exit status {returncode}" if returncode > 0 else f"killed by signal {-returncode}"
        log.warning("hook %s for %s failed after %d ms: %s", phase, log_context, duration_ms, message)
        return HookResult(ok=False, returncode=returncode, duration_ms=duration_ms, error=message)
    log.info("hook %s for %s succeeded in %d ms", phase, log_context, duration_ms)
    return HookResult(ok=True, returncode=0, duration_ms=duration_ms)


class _Budget:
    """A stream's line sink that logs its first HEAD_LINES lines at once and keeps the last TAIL_LINES for `close`,
    counting the ones between."""

    def __init__(self, sink: Callable[[str], None], hook: str, stream: str):
        self.sink = sink
        self.hook = hook
        self.stream = stream
        self.seen = 0
        self.skipped = 0
        self.skipped_bytes = 0
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)

    def __call__(self, line: str) -> None:
        self.seen += 1
        if self.seen <= HEAD_LINES:
            self.sink(line)
            return
        if len(self.tail) == TAIL_LINES:
            self.skipped += 1
            self.skipped_bytes += len(self.tail[0])
        self.tail.append(line)

    def close(self) -> None:
        """Say what was left out, then log the last lines."""
        if self.skipped:
            log.warning("%s: %d lines of %s (%d characters) not logged, after the first %d; the last %d follow",
                        self.hook, self.skipped, self.stream, self.skipped_bytes, HEAD_LINES, len(self.tail))
        while self.tail:
            self.sink(self.tail.popleft())


def _follow(proc: subprocess.Popen, timeout: float, line_sinks: dict[int, Callable[[str], None]]) -> bool:
    """Log the hook's output until both pipes close; enforce the timeout. Returns True if it timed out.

    The hook's pid is its process group id (new session). Linux does not hand out a pid while a
    process group of that id still exists, so killpg after the hook has been reaped cannot hit a
    stranger.
    """
    deadline = time.monotonic() + timeout
    drain_deadline: float | None = None
    timed_out = False
    partial: dict[int, bytes] = {fd: b"" for fd in line_sinks}
    selector = selectors.DefaultSelector()
    for fd in line_sinks:
        selector.register(fd, selectors.EVENT_READ)
    try:
        while True:
            now = time.monotonic()
            if drain_deadline is None:
                ended = _end_if_due(proc, now, deadline)
                if ended is not None:
                    timed_out = ended
                    drain_deadline = now + OUTPUT_DRAIN_GRACE_S
            if drain_deadline is not None and _drained(selector, now, drain_deadline, proc.pid):
                break
            _read_ready(selector, partial, line_sinks)
    finally:
        selector.close()
    for fd, rest in partial.items():
        if rest:
            line_sinks[fd](_decode(rest))
    return timed_out


def _end_if_due(proc: subprocess.Popen, now: float, deadline: float) -> bool | None:
    """None while the hook runs within its time; else kill its process group and say whether it timed out."""
    if proc.poll() is not None:
        kill_process_group(proc.pid)  # leftovers of an exited hook (see module docstring)
        return False
    if now >= deadline:
        kill_process_group(proc.pid)
        proc.wait()
        return True
    return None


def _drained(selector: selectors.BaseSelector, now: float, drain_deadline: float, pid: int) -> bool:
    """After the hook ended: stop when both pipes closed, or at the drain deadline."""
    # Closed pipes alone do not end the wait: a hook may close its output and keep running.
    if not selector.get_map():
        return True
    if now >= drain_deadline:
        # Only a process in another session can still hold the pipes; stop listening to it.
        log.warning("hook pid %d: output still open after the hook ended; no longer read", pid)
        return True
    return False


def _read_ready(selector: selectors.BaseSelector, partial: dict[int, bytes],
                line_sinks: dict[int, Callable[[str], None]]) -> None:
    # Wake up often enough to notice the hook's exit while its pipes stay open.
    for key, _ in selector.select(timeout=0.1):
        fd = key.fd
        chunk = os.read(fd, READ_CHUNK)
        if not chunk:
            selector.unregister(fd)
            continue
        partial[fd] = _emit_lines(partial[fd] + chunk, line_sinks[fd])


def _emit_lines(buffer: bytes, sink: Callable[[str], None]) -> bytes:
    """Send every complete line of `buffer` to `sink`; return the unfinished rest."""
    *lines, rest = buffer.split(b"\n")
    for line in lines:
        sink(_decode(line))
    while len(rest) >= MAX_LINE_BYTES:
        sink(_decode(rest[:MAX_LINE_BYTES]))
        rest = rest[MAX_LINE_BYTES:]
    return rest


def _decode(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").rstrip("\r")
