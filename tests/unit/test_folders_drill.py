"""`config check` says in advance what every pass would refuse in the folders vmsnapd writes (trust drill): a
state_dir that is a symbolic link (e.g. /var/lib/vmsnapd -> /srv/vmsnapd) passed `config check` (exit 0), then
every pass failed with "is a symbolic link: vmsnapd does not write through links". Now exit 78 with the reason,
and what `config check` accepts is exactly what the pass can create (vmsnapd.files.check_folder_to_be)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmsnapd import cli
from vmsnapd.files import check_folder_to_be, ensure_folder


def _config(tmp_path: Path, **daemon: Path) -> Path:
    folders = {"state_dir": tmp_path / "state", "overlay_dir": tmp_path / "overlay", "ram_dir": tmp_path / "ram",
               **daemon}
    config = tmp_path / "vmsnapd.toml"
    config.write_text("[daemon]\nram_staging_dir = \"\"\n" + "".join(f'{k} = "{v}"\n' for k, v in folders.items()))
    config.chmod(0o600)
    return config


def test_a_symlinked_state_dir_is_refused_by_config_check(tmp_path, capsys):
    real = tmp_path / "srv-vmsnapd"
    real.mkdir(mode=0o700)
    (tmp_path / "state").symlink_to(real)
    assert cli.main(["config", "check", "-c", str(_config(tmp_path))]) == cli.EX_CONFIG
    err = capsys.readouterr().err
    assert f"daemon.state_dir: {tmp_path}/state is a symbolic link: vmsnapd does not write through links" in err


def test_a_file_where_ram_dir_goes_is_refused_and_missing_folders_are_fine(tmp_path, capsys):
    (tmp_path / "ram").write_text("not a folder")
    assert cli.main(["config", "check", "-c", str(_config(tmp_path))]) == cli.EX_CONFIG
    assert f"daemon.ram_dir: {tmp_path}/ram is not a directory" in capsys.readouterr().err
    (tmp_path / "ram").unlink()
    assert cli.main(["config", "check", "-c", str(_config(tmp_path))]) == cli.EX_OK  # created by the first pass


def test_a_symlinked_parent_owned_by_root_is_fine(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "lib").symlink_to(real)
    assert cli.main(["config", "check", "-c", str(_config(tmp_path, state_dir=tmp_path / "lib" / "state"))]) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_someone_elses_overlay_dir_is_refused(tmp_path, capsys):
    (tmp_path / "overlay").mkdir(mode=0o711)
    os.chown(tmp_path / "overlay", 65534, 65534)
    assert cli.main(["config", "check", "-c", str(_config(tmp_path))]) == cli.EX_CONFIG
    assert "daemon.overlay_dir:" in capsys.readouterr().err


KINDS = st.sampled_from(["dir", "open-dir", "file", "link-to-dir", "dangling-link", "missing"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(KINDS, min_size=1, max_size=3))
def test_what_config_check_accepts_is_what_a_pass_can_create(tmp_path_factory, kinds):
    """Any chain of folders, files and links: check_folder_to_be passes exactly when ensure_folder works."""
    root = tmp_path_factory.mktemp("tree")
    target = root / "elsewhere"
    target.mkdir(mode=0o700)
    path = root
    for index, kind in enumerate(kinds):
        path = path / f"c{index}"
        if kind == "missing":
            break
        if kind in ("dir", "open-dir"):
            path.mkdir()
            path.chmod(0o700 if kind == "dir" else 0o777)
        elif kind == "file":
            path.write_text("x")
        elif kind == "link-to-dir":
            path.symlink_to(target)
        else:
            path.symlink_to(root / "nowhere")
        if kind in ("file", "dangling-link"):
            break
    try:
        check_folder_to_be(path)
        accepted = True
    except OSError:
        accepted = False
    try:
        ensure_folder(path)
        created = True
    except OSError:
        created = False
    assert accepted == created, (kinds, accepted, created)
    shutil.rmtree(root, ignore_errors=True)
