"""The adapter's connection across a libvirtd restart: a call while libvirtd is away fails with a typed error, and
the first call after it answers again reconnects (vmsnapd.hypervisor.Hypervisor.conn). Restarts the shared
libvirtd: runs where VMSNAPD_LAB_DISRUPTIVE=1 (.ci/run sets it)."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from vmsnapd.hvtypes import HypervisorError, HypervisorUnavailable
from vmsnapd.hypervisor import Hypervisor

pytestmark = [pytest.mark.lab,
              pytest.mark.skipif(os.environ.get("VMSNAPD_LAB_DISRUPTIVE") != "1",
                                 reason="stops the host's shared libvirtd: set VMSNAPD_LAB_DISRUPTIVE=1 on a lab of "
                                        "your own")]


def _stop_libvirtd() -> None:
    pid = subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, text=True, check=True).stdout.split()[0]
    subprocess.run(["kill", pid], check=True)
    while subprocess.run(["kill", "-0", pid], capture_output=True).returncode == 0:
        time.sleep(0.1)


def _start_libvirtd() -> None:
    with open("/var/log/vmsnapd-lab/libvirtd.log", "ab") as log:
        subprocess.Popen(["libvirtd"], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    for _ in range(120):
        if subprocess.run(["timeout", "5", "virsh", "-c", "qemu:///system", "version"],
                          capture_output=True).returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError("libvirtd did not come back")


def test_a_connection_lost_to_a_libvirtd_restart_is_reopened_once_it_answers(lab):
    hv = Hypervisor("qemu:///system")
    hv.connect()
    _stop_libvirtd()
    try:
        # Until the adapter sees the connection is gone it fails on the call; then reconnecting fails: typed both ways.
        deadline = time.monotonic() + 60
        while True:
            with pytest.raises(HypervisorError) as failed:
                hv.domain_names()
            if isinstance(failed.value, HypervisorUnavailable):
                break
            assert time.monotonic() < deadline, f"never saw the connection as lost: {failed.value}"
            time.sleep(0.5)
        with pytest.raises(HypervisorUnavailable):  # asked again while libvirtd is away: the same answer
            hv.domain_names()
    finally:
        _start_libvirtd()
    assert isinstance(hv.domain_names(), list)  # before: "invalid connection pointer" from the closed connection
    hv.close()
