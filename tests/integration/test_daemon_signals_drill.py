"""`vmsnapd run` signalled in the middle of a VM cycle (trust drill): SIGHUP with a policy that no longer names the
VM's dataset, then SIGTERM, both while the guest runs on its overlay. The running pass keeps the policy it started
with and finishes the cycle (snapshot taken, guest back on its base, journal empty), the reload applies to the
next pass, and the daemon exits 0 — nothing left for `recover`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import libvirt
import pytest

pytestmark = [pytest.mark.lab]


def test_sighup_then_sigterm_during_a_cycle_finish_it(lab, shared_vm, vmsnapd_env, tmp_path):
    vm, dataset = shared_vm, shared_vm.disk.dataset
    env = vmsnapd_env
    env.datasets[dataset.name] = {"hourly": 1, "daily": 0, "monthly": 0, "domain": vm.name}
    env.write()
    marker = tmp_path / "snapshotting"
    wrapper = tmp_path / "zfs"  # the zfs snapshot waits 3 s: the signals arrive while the guest is on its overlay
    wrapper.write_text(f'#!/bin/sh\nif [ "$1" = snapshot ]; then touch {marker}; sleep 3; fi\nexec /usr/sbin/zfs "$@"\n')
    wrapper.chmod(0o755)
    log_path = env.root / "daemon.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "vmsnapd", "-c", str(env.config_path), "-v", "run"],
                                stdout=log_file, stderr=subprocess.STDOUT,
                                env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.05)
        assert str(env.overlay_dir) in vm.dom.XMLDesc(0), "the guest runs on its overlay during the snapshot"
        env.datasets.clear()  # the reloaded policy no longer names the VM's dataset
        env.write()
        proc.send_signal(signal.SIGHUP)
        time.sleep(1)  # the main loop picks the reload up within half a second
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=180) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = log_path.read_text()
    assert "config reloaded" in log and "stopping: waiting for a running pass to finish" in log, log[-3000:]
    assert "stopped after 1 pass(es), 0 with failures" in log, log[-3000:]
    snaps = lab.snapshot_names(dataset.name)
    assert len(snaps) == 1 and snaps[0].endswith("_hourly"), snaps
    xml = vm.dom.XMLDesc(0)
    assert str(env.overlay_dir) not in xml and f"'{vm.disk.path}'" in xml
    assert vm.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING and vm.dom.snapshotNum(0) == 0
    assert list((env.state_dir / "cycles").iterdir()) == [], "nothing left for recover"
    lab.wait_counter_advances(vm, by=5, timeout=30)
