"""The unit suite runs with libvirt-python unimportable (issue 10, "Must hold").

While a tests/unit module is collected and while each of its tests runs (setup, call, teardown),
`sys.modules["libvirt"]` (and its C modules, and the libvirt adapter vmsnapd.hypervisor) is None, so any
`import libvirt` raises ImportError — also when the whole suite runs in one process and a lab test imported
libvirt earlier. The modules are put back afterwards for the lab tests. tests/unit/test_layers.py checks that
this is in force.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

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


# Old-style wrappers: pyproject allows pytest 7.4, whose pluggy may predate `wrapper=True`.
@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    with libvirt_unimportable():
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    with libvirt_unimportable():
        yield
