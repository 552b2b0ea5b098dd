"""`make install` / `make uninstall` with DESTDIR and PREFIX, as a packager stages them (pip from PyPI: slow)."""
from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow]


def make(target: str, stage: Path, **variables: str) -> subprocess.CompletedProcess:
    args = ["make", "-C", str(REPO), target, f"DESTDIR={stage}", "PREFIX=/usr",
            *(f"{k}={v}" for k, v in variables.items())]
    proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_install_stages_a_working_tree_keeps_an_existing_policy_and_uninstall_reverses_it(tmp_path):
    stage = tmp_path / "stage"
    make("install", stage, VENVDIR="/opt/vmsnapd-test", BUILDDIR=str(tmp_path / "build"))
    venv = stage / "opt/vmsnapd-test"

    # The venv runs vmsnapd, and nothing in its scripts names the staging directory.
    proc = subprocess.run([venv / "bin/python", "-m", "vmsnapd", "--help"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0 and "usage: vmsnapd" in proc.stdout, proc.stderr
    for script in (venv / "bin").iterdir():
        if script.is_file() and not script.is_symlink():
            assert str(stage) not in script.read_text(errors="replace"), script
    assert (venv / "bin/vmsnapd").read_text().startswith("#!/opt/vmsnapd-test/bin/python\n")
    assert os.readlink(stage / "usr/bin/vmsnapd") == "/opt/vmsnapd-test/bin/vmsnapd"

    unit = (stage / "usr/lib/systemd/system/vmsnapd.service").read_text()
    assert "ExecStart=/opt/vmsnapd-test/bin/vmsnapd run" in unit and "/opt/vmsnapd/" not in unit

    man = gzip.decompress((stage / "usr/share/man/man8/vmsnapd.8.gz").read_bytes()).decode().replace("\\-", "-")
    assert man.startswith('.TH VMSNAPD "8"'), man[:80]
    for command in ("once", "restore", "import-sanoid", "--dry-run", "EXIT STATUS"):
        assert command in man, command
    completion = stage / "usr/share/bash-completion/completions/vmsnapd"
    proc = subprocess.run(["bash", "-c", f"source {completion} && complete -p vmsnapd"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "vmsnapd" in proc.stdout, proc.stderr

    conf = stage / "etc/vmsnapd/vmsnapd.toml"
    assert oct(conf.stat().st_mode & 0o777) == "0o600" and oct(conf.parent.stat().st_mode & 0o777) == "0o700"
    conf.write_text(conf.read_text() + "# edited\n")
    make("install", stage, VENVDIR="/opt/vmsnapd-test", BUILDDIR=str(tmp_path / "build"))
    assert conf.read_text().endswith("# edited\n"), "a second make install overwrote the policy"

    state = stage / "var/lib/vmsnapd"
    state.mkdir(parents=True)
    make("uninstall", stage, VENVDIR="/opt/vmsnapd-test")
    left = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file() or p.is_symlink())
    assert left == ["etc/vmsnapd/vmsnapd.toml"], left
    assert state.is_dir()


def test_install_in_place_runs_from_path_upgrades_and_uninstalls(tmp_path):
    """Without DESTDIR (as on a host), into temporary locations: the CLI symlink runs, a second install upgrades
    the same venv, uninstall removes it and keeps the policy."""
    root = tmp_path / "host"
    where = {"PREFIX": f"{root}/usr/local", "VENVDIR": f"{root}/opt/vmsnapd", "SYSCONFDIR": f"{root}/etc",
             "BUILDDIR": str(tmp_path / "build")}
    args = ["make", "-C", str(REPO), "install", *(f"{k}={v}" for k, v in where.items())]
    for _ in range(2):
        proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "upgrading the existing venv" in proc.stdout
    cli = root / "usr/local/bin/vmsnapd"
    proc = subprocess.run([cli, "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("vmsnapd "), proc.stderr
    conf = root / "etc/vmsnapd/vmsnapd.toml"
    proc = subprocess.run([cli, "-c", conf, "import-sanoid", REPO / "config/sanoid/vm-host.conf"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "[datasets." in proc.stdout, proc.stderr

    proc = subprocess.run(["make", "-C", str(REPO), "uninstall", *(f"{k}={v}" for k, v in where.items())],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (root / "opt/vmsnapd").exists() and not cli.is_symlink()
    assert conf.is_file()
