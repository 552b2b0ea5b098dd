"""Migrating from sanoid + pre/post scripts (docs/migrating-from-sanoid.md): a VM that a failed post-script left on
the scripts' overlay (with its RAM dump and libvirt snapshot record) is snapshotted as it is — vmsnapd's own overlay
goes on top and is committed back into the scripts' overlay, which stays, with the scripts' record and dump; `check`
warns and `status` says how to merge it — and a restore of that snapshot continues at exactly max + 1."""
from __future__ import annotations

import dataclasses

import pytest

pytestmark = [pytest.mark.lab]


def test_a_vm_left_on_the_old_scripts_overlay_is_snapshotted_as_it_is_and_left_on_it(lab, dataset, vmsnapd_env):
    vm = lab.create_vm(dataset)
    overlay = dataset.mountpoint / f"{vm.name}-vda.pre-sanoid.qcow2"
    scripts_dump = vm.workdir / "pre-sanoid.mem"
    # The classic pre-script; its post-script (`virsh blockcommit --active --pivot`) never ran.
    lab.run("virsh", "-c", "qemu:///system", "snapshot-create-as", vm.name, "pre-sanoid",
            "--memspec", f"file={scripts_dump},snapshot=external",
            "--diskspec", f"vda,snapshot=external,file={overlay}", "--diskspec", f"{vm.token_target},snapshot=no",
            "--atomic")
    vm.disks[0] = dataclasses.replace(vm.disk, path=overlay, fmt="qcow2")  # the guest now writes there
    lab.wait_counter_advances(vm, by=3)
    env = vmsnapd_env
    env.datasets[dataset.name] = {"hourly": 3, "daily": 0, "monthly": 0, "domain": vm.name}

    env.run("snapshot", dataset.name)

    (snap,) = lab.snapshot_names(dataset.name)
    sources = [line.split()[-1] for line in lab.run("virsh", "-c", "qemu:///system", "domblklist", vm.name)
               .stdout.decode().splitlines()[2:] if line.strip()]
    assert sources[0] == str(overlay), sources  # back on the scripts' overlay: vmsnapd's own was merged into it
    assert overlay.exists() and scripts_dump.exists()
    assert "pre-sanoid" in lab.run("virsh", "-c", "qemu:///system", "snapshot-list", vm.name, "--name").stdout.decode()
    check = env.run("check", expect=1)  # WARNING, with the way to merge it
    assert f"{vm.name} runs on an overlay vmsnapd did not make, vda: {overlay} (libvirt snapshot pre-sanoid)" \
        in check.stdout and f"virsh blockcommit {vm.name} vda --active --pivot" in check.stdout, check.stdout
    assert f"on an overlay vmsnapd did not make: vda: {overlay}" in env.run("status").stdout
    at_snapshot = lab.snapshot_max_counter(f"{dataset.name}@{snap}", vm.disk.relpath, "qcow2")
    lab.wait_counter_advances(vm, by=10, start=at_snapshot)

    lab.write_token(vm, "restored")
    env.run("restore", vm.name, snap, "--force-stop", "--yes")
    lab.wait_counter_advances(vm, by=10, start=at_snapshot, timeout=60)
    rewritten, first_new = lab.resume_evidence(vm, at_snapshot, "restored")
    assert not rewritten and first_new == at_snapshot + 1, (rewritten[:5], first_new, at_snapshot)
    lab.destroy_vm(vm)
