"""The pure planners and the low modules import with libvirt-python unimportable (issue 10: layers point down)."""

from __future__ import annotations

import subprocess
import sys

import pytest

LIBVIRT_FREE = ["vmsnapd.ramsweep", "vmsnapd.clonexml", "vmsnapd.asides", "vmsnapd.report", "vmsnapd.policy",
                "vmsnapd.monitoring", "vmsnapd.names", "vmsnapd.journal", "vmsnapd.files", "vmsnapd.pruneguard",
                "vmsnapd.ownership", "vmsnapd.metrics"]


@pytest.mark.parametrize("module", LIBVIRT_FREE)
def test_imports_without_libvirt(module: str) -> None:
    code = f"import sys; sys.modules['libvirt'] = None; import {module}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_check_fails_when_libvirt_is_needed() -> None:
    code = "import sys; sys.modules['libvirt'] = None; import libvirt"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "libvirt" in result.stderr
