"""The single chokepoint through which vmsnapd runs external commands.

Every `zfs`, `zpool` or hook invocation goes through `Runner.run`: an argv list (never a shell string),
a timeout, the argv logged at DEBUG, and on failure a typed exception that keeps the tail of stderr so
the adapters can classify the error and the operator can read it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

log = logging.getLogger(__name__)

STDERR_TAIL_CHARS = 2000


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_ms: int


class CommandError(Exception):
    """A command could not run or did not succeed."""

    def __init__(self, argv: Sequence[str], message: str, returncode: int | None = None, stderr: str = ""):
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr_tail = stderr[-STDERR_TAIL_CHARS:]
        super().__init__(message)


class CommandFailed(CommandError):
    """The command ran and exited non-zero."""


class CommandTimeout(CommandError):
    """The command ran past its timeout and was killed (with its process group)."""


class CommandNotFound(CommandError):
    """The executable does not exist or is not executable."""


def kill_process_group(pgid: int) -> None:
    """SIGKILL a child started in a session of its own (its pid is its process group id), and with it
    the grandchildren a script may have forked."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Runner:
    """Runs argv lists with a timeout. Inject it; tests and dry runs can subclass it."""

    def __init__(self, default_timeout: float = 300.0):
        self.default_timeout = default_timeout

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        input_text: str | None = None,
        cwd: str | None = None,
    ) -> CommandResult:
        argv = tuple(argv)
        if not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError(f"argv must be a non-empty list of strings, got {argv!r}")
        limit = self.default_timeout if timeout is None else timeout
        log.debug("exec %s (timeout %ss)", list(argv), limit)
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",  # odd bytes in a name or a message must not crash the reader: parsers refuse U+FFFD
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise CommandNotFound(argv, f"cannot execute {argv[0]}: {exc.strerror}") from exc
        try:
            stdout, stderr = proc.communicate(input=input_text, timeout=limit)
        except subprocess.TimeoutExpired:
            kill_process_group(proc.pid)
            stdout, stderr = proc.communicate()
            raise CommandTimeout(
                argv, f"{argv[0]} killed after {limit}s timeout", proc.returncode, stderr or ""
            ) from None
        duration_ms = int((time.monotonic() - started) * 1000)
        result = CommandResult(argv, proc.returncode, stdout, stderr, duration_ms)
        log.debug("exit %s after %d ms: %s", proc.returncode, duration_ms, argv[0])
        if check and proc.returncode != 0:
            tail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {proc.returncode}"
            raise CommandFailed(argv, f"{' '.join(argv[:3])}: {tail}", proc.returncode, stderr)
        return result
