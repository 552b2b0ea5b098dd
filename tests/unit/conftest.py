"""The unit suite runs with libvirt-python unimportable (issue 10, "Must hold").

While a tests/unit module is collected and while each of its tests runs (setup, call, and teardown — except
the session's last teardown, which also ends the lab's session fixtures),
`sys.modules["libvirt"]` (and its C modules, and the libvirt adapter vmsnapd.hypervisor) is None, so any
`import libvirt` raises ImportError — also when the whole suite runs in one process and a lab test imported
libvirt earlier. The modules are put back afterwards for the lab tests. tests/unit/test_layers.py checks that
this is in force.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest

import vmsnapd

UNIMPORTABLE = ("libvirt", "libvirtmod", "libvirt_qemu", "libvirtmod_qemu", "vmsnapd.hypervisor")
_MISSING = object()


@contextmanager
def libvirt_unimportable() -> Iterator[None]:
    saved = {name: sys.modules.get(name, _MISSING) for name in UNIMPORTABLE}
    adapter = vmsnapd.__dict__.pop("hypervisor", _MISSING)  # `from vmsnapd import hypervisor` reads the package
    for name in UNIMPORTABLE:
        sys.modules[name] = None
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is _MISSING:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        if adapter is not _MISSING:
            vmsnapd.hypervisor = adapter


UNIT_DIR = Path(__file__).resolve().parent


def _in_unit_suite(node: pytest.Item | pytest.Collector) -> bool:
    """pytest calls pytest_runtest_protocol through config.hook, for every item of the session, whatever conftest
    declares it: only the unit suite's own items are run without libvirt (the lab tests need it)."""
    path = getattr(node, "path", None)
    return path is not None and Path(path).resolve().is_relative_to(UNIT_DIR)


def _poisoned(node: pytest.Item | pytest.Collector, active: bool = True):
    """libvirt unimportable for a node of the unit suite; nothing for any other node."""
    return libvirt_unimportable() if active and _in_unit_suite(node) else nullcontext()


# Old-style wrappers: pyproject allows pytest 7.4, whose pluggy may predate `wrapper=True`.
@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    with _poisoned(collector):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with _poisoned(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with _poisoned(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    # The last item's teardown also ends the session's fixtures (the lab's cleanup, which needs libvirt).
    with _poisoned(item, active=nextitem is not None):
        yield


FAKE_ZFS = Path(__file__).resolve().parents[1] / "sanoid_oracle" / "fakezfs.py"


@pytest.fixture
def fake_zfs(tmp_path, monkeypatch) -> Path:
    """The sanoid oracle's fake `zfs` (tests/sanoid_oracle/fakezfs.py) first on PATH, for vmsnapd's real Runner and
    Zfs adapter. Returns its state file, which the test writes (JSON: datasets, snapshots); every call is logged
    to `<state>.log`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "zfs").write_text(f"#!/bin/sh\nexec {sys.executable} -I {FAKE_ZFS} \"$@\"\n")
    (bin_dir / "zfs").chmod(0o755)
    state = tmp_path / "zfs.json"
    monkeypatch.setenv("FAKE_ZFS_STATE", str(state))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return state
