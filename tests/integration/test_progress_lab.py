"""The terminal progress line reads real libvirt job information: an active block commit (which stays in the
"ready" state until pivoted, so nothing here depends on timing) is described with its bytes."""
from __future__ import annotations

import io
import time

import pytest

from vmsnapd.progress import _Poller

pytestmark = [pytest.mark.lab]


def test_a_block_commit_shows_in_the_progress_line(lab, running_vm):
    import libvirt

    vm, disk = running_vm, running_vm.disk
    dom = vm.dom
    overlay = vm.workdir / "progress-vda.qcow2"
    snap_xml = f"""<domainsnapshot><name>progress</name><disks>
        <disk name='{disk.target}' snapshot='external'><driver type='qcow2'/><source file='{overlay}'/></disk>
        <disk name='{vm.token_target}' snapshot='no'/></disks></domainsnapshot>"""
    snap = dom.snapshotCreateXML(snap_xml, libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY)
    conn = libvirt.openReadOnly(lab.URI)
    try:
        assert _Poller._one(conn, vm.name) in (None, "")  # no job yet: no line
        dom.blockCommit(disk.target, None, None, 0, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)
        deadline = time.monotonic() + 60
        line = None
        while not line and time.monotonic() < deadline:  # the job appears; it stays until the pivot below
            line = _Poller._one(conn, vm.name)
            time.sleep(0.1)
        assert line and line.startswith(f"{vm.name}: commit {disk.target} ") and "%" in line, line
        # The poller thread writes that line to a terminal-like stream.
        out = io.StringIO()
        poller = _Poller(lab.URI, [vm.name], out)
        poller.start()
        deadline = time.monotonic() + 30
        while "commit" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.2)
        poller.stop.set()
        poller.join(timeout=10)
        assert f"\r{vm.name}: commit {disk.target}" in out.getvalue()
    finally:
        conn.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = dom.blockJobInfo(disk.target, 0)
            if info and info["cur"] == info["end"] and "ready='yes'" in dom.XMLDesc(0):
                dom.blockJobAbort(disk.target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                break
            if not info:
                break
            time.sleep(0.1)
        while str(overlay) in dom.XMLDesc(0) and time.monotonic() < deadline:
            time.sleep(0.1)
        snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
        overlay.unlink(missing_ok=True)
