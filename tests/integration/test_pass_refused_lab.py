"""`check` sees a pass refused outright at once (CRITICAL with the reason), not hours later through the snapshot ages,
and the next pass that runs clears it: the real CLI on ZFS, overlay_dir edited into a managed dataset (a folder the
pass's folder check refuses at run time, `config check` not being run after the edit)."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.lab]


def test_check_is_critical_while_passes_are_refused_and_ok_after_one_runs(lab, dataset, vmsnapd_env):
    env = vmsnapd_env
    env.datasets[dataset.name] = {"hourly": 1, "daily": 0, "monthly": 0, "domain": "none"}
    inside = f"{dataset.mountpoint}/vmsnapd-overlays"
    env.daemon["overlay_dir"] = inside

    refused = env.run("once", expect=1)
    assert "pass refused, nothing done" in refused.stdout and inside in refused.stdout, refused.stdout
    assert lab.snapshot_names(dataset.name) == []
    check = env.run("check", expect=2)
    assert check.stdout.startswith("VMSNAPD CRITICAL - passes refused, nothing done, since "), check.stdout
    assert f"daemon.overlay_dir = {inside}: is inside managed dataset {dataset.name}" in check.stdout, check.stdout
    assert "PASS REFUSED: passes refused" in env.run("status").stdout

    del env.daemon["overlay_dir"]  # fixed: the next pass runs, and check is OK again
    env.run("once")
    assert len(lab.snapshot_names(dataset.name)) == 1
    check = env.run("check")
    assert "refused" not in check.stdout and check.stdout.startswith("VMSNAPD OK"), check.stdout
