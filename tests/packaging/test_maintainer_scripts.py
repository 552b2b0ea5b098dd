"""The Debian package's maintainer scripts on upgrade and removal (trust drill), run as dpkg runs them, each
scenario in a private mount namespace: tmpfs over /run (with /run/systemd/system, "systemd is PID 1"), /etc, /opt
and /var/lib, and a stand-in `systemctl` first on PATH that records its calls and keeps the unit's state in a
file. Nothing of the host is touched; no lab needed (root and unshare(1) are).

- An upgrade stops a running daemon BEFORE dpkg unpacks the new files and starts it again once configured: a
  daemon running during apt's unpack-to-configure window (minutes when many packages are upgraded) imports
  modules lazily (libvirt's adapter, pydantic's parts) and would load the new version's beside its own.
- remove/purge leave /var/lib/vmsnapd (journal, RAM dumps of existing snapshots) as they are.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "packaging" / "debian"

FAKE_SYSTEMCTL = """#!/bin/sh
# stand-in: records its calls; the unit runs while $STATE/active exists
echo "$*" >> "$STATE/calls"
case "$1" in
  is-active) [ -e "$STATE/active" ]; exit $?;;
  stop) rm -f "$STATE/active";;
  start) touch "$STATE/active";;
  try-restart) if [ -e "$STATE/active" ]; then echo restarted >> "$STATE/calls"; fi;;
  disable) [ "$2" = --now ] && rm -f "$STATE/active";;
esac
exit 0
"""


@pytest.fixture
def host(tmp_path):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    state = tmp_path / "state"
    state.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)

    def run(*steps: str, active: bool) -> list[str]:
        """Run maintainer script calls (`prerm upgrade 0.2.0`, …) in one namespace; their systemctl calls."""
        (state / "calls").write_text("")
        (state / "active").unlink(missing_ok=True)
        if active:
            (state / "active").touch()
        lines = ["set -e", "for d in /run /etc /opt /var/lib; do mount -t tmpfs tmpfs $d; done",
                 "mkdir -p /run/systemd/system /etc/vmsnapd /opt/vmsnapd/bin /var/lib/vmsnapd/cycles "
                 "/var/lib/vmsnapd/ram/web",
                 "echo '# edited' > /etc/vmsnapd/vmsnapd.toml",
                 "echo dump > /var/lib/vmsnapd/ram/web/web_2026-11-29_01:00:00.mem",
                 "echo '{}' > /var/lib/vmsnapd/cycles/r.json"]
        for step in steps:
            script, *args = step.split()
            lines.append(f"sh {SCRIPTS / script} {' '.join(args)}")
        lines.append(f"find /var/lib/vmsnapd /etc/vmsnapd -type f | sort > {state}/left")
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(lines)],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STATE": str(state)})
        assert proc.returncode == 0, proc.stderr
        return (state / "calls").read_text().splitlines()

    run.active = lambda: (state / "active").exists()
    run.left = lambda: (state / "left").read_text().split()
    return run


def test_an_upgrade_stops_a_running_daemon_before_the_unpack_and_starts_it_after(host):
    calls = host("prerm upgrade 0.2.0", active=True)
    assert "stop vmsnapd.service" in calls and not host.active(), calls  # stopped while dpkg unpacks
    calls = host("prerm upgrade 0.2.0", "postinst configure 0.1.0", active=True)
    assert calls.index("stop vmsnapd.service") < calls.index("start vmsnapd.service") and host.active(), calls


def test_an_upgrade_leaves_a_stopped_daemon_stopped(host):
    calls = host("prerm upgrade 0.2.0", "postinst configure 0.1.0", active=False)
    assert not host.active() and not any(c.startswith(("start", "stop")) for c in calls), calls


def test_a_failed_upgrade_starts_the_old_version_again(host):
    calls = host("prerm upgrade 0.2.0", "postinst abort-upgrade 0.2.0", active=True)
    assert "start vmsnapd.service" in calls and host.active(), calls


def test_an_upgrade_from_a_version_whose_prerm_did_not_stop_still_restarts(host):
    calls = host("postinst configure 0.1.0", active=True)
    assert "restarted" in calls and host.active(), calls


def test_remove_and_purge_leave_the_journal_and_the_ram_dumps(host):
    calls = host("prerm remove", "postrm remove", "postrm purge", active=True)
    assert "disable --now vmsnapd.service" in calls and not host.active(), calls
    assert host.left() == ["/var/lib/vmsnapd/cycles/r.json", "/var/lib/vmsnapd/ram/web/web_2026-11-29_01:00:00.mem"]


def test_an_upgrade_keeps_the_edited_policy(host):
    host("prerm upgrade 0.2.0", "postrm upgrade 0.2.0", "postinst configure 0.1.0", active=False)
    assert "/etc/vmsnapd/vmsnapd.toml" in host.left()
