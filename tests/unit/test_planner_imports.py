"""The pure planners and the low modules import with libvirt-python unimportable (issue 10: layers point down)."""

from __future__ import annotations

import subprocess
import sys

LIBVIRT_FREE = ["vmsnapd.ramsweep", "vmsnapd.clonexml", "vmsnapd.asides", "vmsnapd.report", "vmsnapd.policy",
                "vmsnapd.monitoring", "vmsnapd.names", "vmsnapd.journal", "vmsnapd.files", "vmsnapd.pruneguard",
                "vmsnapd.ownership", "vmsnapd.metrics", "vmsnapd.backing", "vmsnapd.rampairing"]

# One interpreter for all (a fresh one: libvirt must not be imported yet); prints each module that fails.
PROBE = """
import importlib, sys
sys.modules["libvirt"] = None
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        print(f"{name}: {exc}")
"""


def _failing(modules: list[str]) -> str:
    result = subprocess.run([sys.executable, "-c", PROBE, *modules], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_planners_import_without_libvirt() -> None:
    assert _failing(LIBVIRT_FREE) == ""


def test_the_probe_sees_a_module_that_needs_libvirt() -> None:
    assert _failing(["vmsnapd.names", "libvirt"]).startswith("libvirt:")
