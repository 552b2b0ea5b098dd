"""Shared pytest fixtures.  Lab fixtures (zfs-fuse pools, libvirt counter guests) come from tests/lab/lab.py.

Lab tests carry ``@pytest.mark.lab``.  When the lab is not usable here they are skipped with the reason, or, with
``VMSNAPD_LAB_REQUIRED=1`` (set by ``make test`` and CI), they fail loudly.  Pure unit tests need none of this.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
import lab as labmod  # tests/lab/lab.py

# Tests never assert timings (the machine is shared and noisy): no per-example deadline and no "too slow" health
# check for the property-based tests; an explicit @settings still sets its own example count.
settings.register_profile("vmsnapd", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("vmsnapd")

LAB_REQUIRED = os.environ.get("VMSNAPD_LAB_REQUIRED") == "1"
_lab_state: dict = {}


def _lab_problem() -> str | None:
    """None when the lab is usable, else the reason (checked once per session)."""
    if "problem" not in _lab_state:
        try:
            labmod.check_lab()
            _lab_state["problem"] = None
        except labmod.LabUnavailable as e:
            _lab_state["problem"] = str(e)
        except Exception as e:  # noqa: BLE001
            _lab_state["problem"] = f"lab check failed: {e!r}"
    return _lab_state["problem"]


def _require_lab() -> None:
    problem = _lab_problem()
    if problem:
        if LAB_REQUIRED:
            pytest.fail(f"VMSNAPD_LAB_REQUIRED=1 but the lab is not available: {problem}", pytrace=False)
        pytest.skip(f"lab not available: {problem} (tests/lab/setup.sh sets it up)")


def pytest_runtest_setup(item):
    if item.get_closest_marker("lab"):
        _require_lab()


@pytest.fixture(scope="session")
def lab():
    """The lab helpers module (tests/lab/lab.py), services verified up; leftovers of crashed runs removed."""
    _require_lab()
    removed = labmod.cleanup_leftovers()
    if removed:
        print(f"\nlab: removed leftovers of an earlier run: {removed}")
    labmod.reset_faketime_unless_held()
    yield labmod
    labmod.reset_faketime_unless_held()


@pytest.fixture(scope="session")
def pool(lab) -> labmod.Pool:
    """A throw-away pool (Pool: .name, .file, .mountpoint) on a sparse 2 GiB file; destroyed at session end
    together with every lab domain this session created."""
    p = lab.create_pool("2G")
    yield p
    errors = []
    for name in list(lab.CREATED_VMS):
        try:
            lab.destroy_vm(name)
        except Exception as e:  # noqa: BLE001
            errors.append(f"domain {name}: {e}")
    stuck_pool = None
    try:
        lab.destroy_pool(p)
    except Exception as e:  # noqa: BLE001
        if "pool is busy" in str(e):
            # zfs-fuse sometimes keeps a pool "busy" for good (LAB-NOTES) after every retry, export and -f:
            # a defect of the lab's ZFS, not of the suite. The next session's cleanup_leftovers retries it.
            stuck_pool = p.name
            print(f"\nlab: WARNING: zfs-fuse keeps pool {p.name} busy; left for the next run's cleanup: {e}")
        else:
            errors.append(f"pool {p.name}: {e}")
    me = f"{lab.PREFIX}{os.getpid()}x"
    stuck = {s for s in (stuck_pool, *lab.STUCK_POOLS) if s}  # busy for good, left for the next cleanup
    mine = {k: [n for n in v if (n.startswith(me) or f"/{me}" in n) and not any(s in n for s in stuck)]
            for k, v in lab.leftovers().items()}
    if errors or any(mine.values()):
        pytest.fail(f"lab cleanup left things behind: errors={errors} leftovers={mine}", pytrace=False)


def _destroy_dataset_or_defer(lab, ds) -> None:
    """zfs-fuse sometimes keeps a dataset "busy" even for destroy -f (a QEMU that just died, fuse lag): then the
    session's pool teardown (zpool destroy -f) removes it, and fails the session if anything is left."""
    try:
        lab.destroy_dataset(ds)
    except lab.LabError as e:
        print(f"lab: dataset {ds} left for the pool teardown: {e}")


def _destroy_vms_since(lab, mark: int) -> None:
    for name in lab.CREATED_VMS[mark:]:
        try:
            lab.destroy_vm(name)
        except Exception as e:  # noqa: BLE001
            print(f"lab: could not remove domain {name}: {e}")


@pytest.fixture
def dataset(lab, pool) -> labmod.Dataset:
    """A fresh dataset (Dataset: .name "vlab…/ds…", .mountpoint Path) under the session pool.  At teardown every
    domain created during the test is destroyed/undefined first, then the dataset (and its snapshots/clones)."""
    mark = len(lab.CREATED_VMS)
    ds = lab.create_dataset(pool)
    yield ds
    _destroy_vms_since(lab, mark)
    _destroy_dataset_or_defer(lab, ds)


@pytest.fixture
def dataset_factory(lab, pool):
    """make(**zfs_props) -> Dataset: more fresh datasets under the pool; all destroyed at teardown."""
    mark = len(lab.CREATED_VMS)
    made: list[labmod.Dataset] = []

    def make(parent: str | None = None, **props) -> labmod.Dataset:
        ds = lab.create_dataset(parent or pool, **props)
        made.append(ds)
        return ds
    yield make
    _destroy_vms_since(lab, mark)
    for ds in reversed(made):
        _destroy_dataset_or_defer(lab, ds)


@pytest.fixture
def vm_factory(lab, dataset_factory):
    """make(disks=1, fmt="raw", agent=False, start=True, **create_vm_kwargs) -> VM.

    Each counter disk lives on its own fresh dataset; started guests are verified advancing.  Every domain is
    destroyed and undefined at teardown, then the datasets."""
    def make(disks: int = 1, fmt: str = "raw", agent: bool = False, start: bool = True, **kw) -> labmod.VM:
        dss = [dataset_factory() for _ in range(disks)]
        return lab.create_vm(dss, fmt=fmt, agent=agent, start=start, **kw)
    yield make


@pytest.fixture
def running_vm(lab, dataset) -> labmod.VM:
    """A running counter guest (VM) whose raw disk vda is ``dataset.mountpoint/<name>-vda.img``; its counter is
    verified advancing.  VM attributes: name, dom (libvirt.virDomain), disks[0].path/.dataset/.relpath,
    token_path, console_log, max_counter()."""
    return lab.create_vm(dataset)


@pytest.fixture
def stopped_vm(lab, dataset) -> labmod.VM:
    """A defined, shut-off counter guest whose disk already carries records (it ran until the counter advanced,
    then was hard-stopped)."""
    vm = lab.create_vm(dataset)
    lab.stop_vm(vm)
    return vm


@pytest.fixture
def two_disk_vm(vm_factory) -> labmod.VM:
    """A running guest with two counter disks (vda, vdb) on two datasets; both get the same seq."""
    return vm_factory(disks=2)


@pytest.fixture
def agent_vm(vm_factory) -> labmod.VM:
    """A running guest with qemu-guest-agent (channel org.qemu.guest_agent.0) and an ext4 disk mounted at /mnt."""
    return vm_factory(agent=True)


@pytest.fixture(autouse=True)
def _faketime_guard():
    """A test that shifts the zfs-fuse clock (lab.set_faketime) never leaks that to the next test."""
    yield
    try:
        if labmod.FAKETIME_FILE.exists() and labmod.get_faketime() != "+0":
            labmod.reset_faketime_unless_held()  # another session's locked window is theirs, not a leak
    except OSError:
        pass
