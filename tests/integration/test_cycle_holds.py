"""Claims about real libvirt that the fast fault tests (tests/unit/test_cycle_fakes.py) rest on, for the ways a cycle
holds a guest still (vmsnapd/holdstill.py) together with the guest agent's file-system freeze."""
from __future__ import annotations

import re

import libvirt
import pytest

import lab as labmod  # tests/lab/lab.py, put on sys.path by tests/conftest.py

pytestmark = [pytest.mark.lab]

ONE_HOURLY = {"hourly": 1, "daily": 0, "monthly": 0}


@pytest.mark.parametrize("memory", [True, False])
def test_pause_method_with_quiesce_leaves_the_guest_running_and_thawed(lab, shared_agent_vm, vmsnapd_env, memory):
    """The pause method holds the guest paused for zfs (libvirt's manual snapshot, or a plain pause without RAM).
    libvirt refuses the agent's thaw while the guest is paused ("domain is not running"), so the file systems are
    thawed once the guest runs again: the guest must never be left frozen."""
    vm, dataset = shared_agent_vm, shared_agent_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {**ONE_HOURLY, "domain": vm.name, "method": "pause", "quiesce": "required",
                                  "memory": memory}

    proc = env.run("snapshot", dataset.name)

    assert "fsthaw failed" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert re.search(r"cycle thawed .*: [1-9]\d* file system\(s\) thawed", proc.stderr), proc.stderr
    assert vm.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert labmod.agent_command(vm.dom, "guest-fsfreeze-status") == "thawed"
    assert len(lab.snapshot_names(dataset.name)) == 1
    assert not (env.state_dir / "cycles").exists() or list((env.state_dir / "cycles").iterdir()) == []
    lab.wait_counter_advances(vm, by=5, timeout=30)


def test_fs_thaw_of_a_paused_guest_is_refused(lab, shared_agent_vm):
    """The libvirt behaviour the cycle's order rests on: no agent command while the guest is paused."""
    vm = shared_agent_vm
    vm.dom.fsFreeze(None, 0)
    vm.dom.suspend()
    try:
        with pytest.raises(libvirt.libvirtError, match="not running"):
            vm.dom.fsThaw(None, 0)
    finally:
        vm.dom.resume()
        vm.dom.fsThaw(None, 0)
    assert labmod.agent_command(vm.dom, "guest-fsfreeze-status") == "thawed"
