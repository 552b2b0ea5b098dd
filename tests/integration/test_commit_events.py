"""The live commit's wait on a real libvirt (vmsnapd.blockjob, session 19): libvirt's block-job events reach the
adapter keyed by the disk's target, the wait needs nothing else, and a closed adapter leaves no connection open
(its event callbacks each hold one). The wait's logic itself, with simulated time: tests/unit/test_blockjob_events.py.
"""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from vmsnapd.blockjob import BlockJobEvent
from vmsnapd.hypervisor import Hypervisor

pytestmark = [pytest.mark.lab]


def _on_overlay(lab, vm, hv: Hypervisor) -> str:
    """Put the guest's first disk on a fresh overlay, as a cycle of the overlay method does (disk only)."""
    overlay = str(vm.workdir / "events-overlay.qcow2")
    hv.create_overlay(overlay, str(vm.disk.path), vm.disk.fmt)
    hv.snapshot_external(vm.name, {vm.disk.target: overlay}, None, live=False,
                         skip_disks=[vm.token_target], reuse=True)
    assert overlay in vm.dom.XMLDesc(0)
    return overlay


def test_the_commit_wait_is_woken_by_libvirt_events(lab, shared_vm):
    """libvirt says READY and COMPLETED for the disk's target, which is what the adapter's callback keys them on.
    With the re-read every hour and 60 s to finish, the commit returns only when the job is synced at the first
    read (then the pivot comes at once) or an event wakes the wait; else it fails with BlockJobFailed."""
    vm = shared_vm
    hv = Hypervisor(lab.URI, block_job_timeout=60)
    hv.block_job_recheck_s = 3600.0
    try:
        overlay = _on_overlay(lab, vm, hv)
        time.sleep(1)  # the guest writes into the overlay (~30 records/s): the commit has something to copy
        with hv._block_jobs.watch(vm.name, vm.disk.target) as seen:  # beside the commit's own watch
            hv.commit_active(vm.name, vm.disk.target)
            if BlockJobEvent.COMPLETED not in seen.events:
                seen.wait(30)  # libvirt may deliver the end just after the pivot call returned
        assert BlockJobEvent.READY in seen.events, seen.events
        assert BlockJobEvent.COMPLETED in seen.events, seen.events
        xml = vm.dom.XMLDesc(0)
        assert f"'{vm.disk.path}'" in xml and overlay not in xml
        assert vm.dom.blockJobInfo(vm.disk.target, 0) == {}
        lab.wait_counter_advances(vm, by=3)
    finally:
        hv.close()
        (vm.workdir / "events-overlay.qcow2").unlink(missing_ok=True)


def _my_clients() -> int:
    """libvirtd's client connections opened by this process."""
    ids = subprocess.run(["virt-admin", "srv-clients-list", "libvirtd"], capture_output=True, text=True,
                         check=True).stdout.split()
    mine = 0
    for client in filter(str.isdigit, ids):
        info = subprocess.run(["virt-admin", "client-info", "libvirtd", client], capture_output=True, text=True)
        mine += any(line.replace(" ", "") == f"unix_process_id:{os.getpid()}" for line in info.stdout.splitlines())
    return mine


def test_close_deregisters_the_callbacks_and_closes_the_connection(lab):
    before = _my_clients()
    hv = Hypervisor(lab.URI)
    hv.connect()
    assert _my_clients() == before + 1
    hv.close()
    assert _my_clients() == before  # a callback left registered would keep the connection open
