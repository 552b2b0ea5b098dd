"""A real cycle (RAM dump, overlay, hooks), prune and restore under systemd/vmsnapd.service's sandbox, as far as it
can be reproduced without systemd as PID 1: the unit's capability bounding set and no_new_privs (util-linux
`setpriv`). Not reproduced here (argued in docs/operations.md): the seccomp filters, the device cgroup. The unit
deliberately has no option that creates a mount namespace (a restore's clones and renamed datasets would be
mounted for vmsnapd alone on OpenZFS); a test below keeps it so. The hooks record what they ran under, so the
test also proves the sandbox was in force."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "vmsnapd.service"
CAP_NUMBERS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3, "CAP_KILL": 5,
               "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SYS_ADMIN": 21}
# What this emulation reproduces; if the unit changes one of these, the emulation must follow.
EMULATED = {"NoNewPrivileges": "yes"}
# Options that give a service its own mount namespace, cutting mount propagation towards the host.
MOUNT_NAMESPACE_OPTIONS = ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateMounts", "PrivateDevices",
                           "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "TemporaryFileSystem",
                           "BindPaths", "BindReadOnlyPaths", "ProtectKernelTunables", "ProtectKernelModules",
                           "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc", "ProcSubset", "MountFlags")
HOOK = r"""#!/bin/sh
log="$(dirname "$0")/hook.log"
echo "phase=$VMSNAPD_PHASE $(grep CapBnd /proc/self/status | tr -d '\t') $(grep NoNewPrivs /proc/self/status | tr -d '\t')" >>"$log"
"""


def _unit_options() -> dict[str, str]:
    options = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            options[key.strip()] = value.strip()
    return options


def _bounding_set() -> tuple[str, int]:
    names = _unit_options()["CapabilityBoundingSet"].split()
    unknown = [n for n in names if n not in CAP_NUMBERS]
    assert not unknown, f"add {unknown} to CAP_NUMBERS"
    spec = ",".join(["-all"] + [f"+{n.removeprefix('CAP_').lower()}" for n in names])
    return spec, sum(1 << CAP_NUMBERS[n] for n in names)


def sandboxed(env, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    spec, _ = _bounding_set()
    env.write()
    argv = ["setpriv", f"--bounding-set={spec}", "--inh-caps=-all", "--no-new-privs", "--",
            sys.executable, "-m", "vmsnapd", "-c", str(env.config_path), "-v", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == expect, (f"sandboxed vmsnapd {' '.join(args)} exited {proc.returncode}\n"
                                       f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def test_the_emulation_matches_the_unit():
    options = _unit_options()
    for key, value in EMULATED.items():
        assert options.get(key) == value, f"the unit's {key}= changed: update this test's emulation"


def test_the_unit_keeps_the_host_mount_namespace():
    """zfs clone/rename (restore) mount in the caller's namespace: the service must share the host's."""
    options = _unit_options()
    assert not [key for key in MOUNT_NAMESPACE_OPTIONS if key in options], options


@pytest.mark.lab
def test_cycle_prune_hooks_and_restore_work_inside_the_units_sandbox(lab, dataset, vmsnapd_env, request):
    env = vmsnapd_env
    vm = lab.create_vm(dataset)
    hook = env.root / "hook.sh"
    hook.write_text(HOOK)
    hook.chmod(0o700)
    env.datasets[dataset.name] = {"hourly": 1, "daily": 0, "monthly": 0, "domain": vm.name,
                                  "hooks": {"pre_snapshot": [str(hook)], "post_snapshot": [str(hook)],
                                            "pre_prune": [str(hook)]}}

    with lab.faketime("-3h"):  # an hourly snapshot that is 3 hours old by `creation`: due for pruning
        sandboxed(env, "snapshot", dataset.name)
    (old,) = lab.snapshot_names(dataset.name)
    old_dumps = sorted((env.ram_dir / vm.name).glob("*"))
    assert old_dumps, "the cycle kept no RAM dump"
    lab.next_second()
    sandboxed(env, "snapshot", dataset.name)
    (new,) = [s for s in lab.snapshot_names(dataset.name) if s != old]
    at_new = lab.snapshot_max_counter(f"{dataset.name}@{new}", vm.disk.relpath)

    proc = sandboxed(env, "once", "--prune")
    assert sorted(lab.snapshot_names(dataset.name)) == [new], proc.stdout + proc.stderr
    assert not any(p.exists() for p in old_dumps), "the pruned cycle's RAM dump is still there"

    lab.write_token(vm, "sandboxed")
    proc = sandboxed(env, "restore", vm.name, new, "--force-stop", "--yes")
    assert "resumed" in proc.stdout, proc.stdout
    lab.wait_counter_advances(vm, by=5, start=at_new, timeout=60)
    rewritten, first_new = lab.resume_evidence(vm, at_new, "sandboxed")
    assert not rewritten and first_new == at_new + 1, (rewritten[:5], first_new, at_new)
    lab.stop_vm(vm)  # the replaced state is kept aside: drop it (zfs-fuse cannot while the VM has the origin open)
    sandboxed(env, "restore", "--drop-aside", vm.name, "--yes")

    _, mask = _bounding_set()
    log = (env.root / "hook.log").read_text().splitlines()
    phases = [line.split()[0] for line in log if line.startswith("phase=")]
    assert phases.count("phase=pre_snapshot") == 2 and "phase=pre_prune" in phases, log
    assert all(f"CapBnd:{mask:016x}" in line and "NoNewPrivs:1" in line for line in log if "phase=" in line), log
