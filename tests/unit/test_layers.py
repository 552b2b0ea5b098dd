"""Layers point down (issue 10): only the libvirt adapter needs libvirt, the adapters import no policy or
orchestration, and the unit suite runs without libvirt (tests/unit/conftest.py)."""

from __future__ import annotations

import ast
import functools
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import vmsnapd

PACKAGE = Path(vmsnapd.__file__).parent
ROOT = PACKAGE.parent

# The libvirt adapter. (The SPEC's rule also lets the CLI wiring and the daemon need libvirt; they do not,
# and must not: the unit suite imports them.) `vmsnapd.__main__` runs the CLI when imported.
NEEDS_LIBVIRT = {"vmsnapd.hypervisor"}
# Who may import libvirt itself: the adapter, and the CLI's progress line (a best-effort read-only poller that
# imports libvirt in its thread and shows nothing without it).
IMPORTS_LIBVIRT = {"vmsnapd.hypervisor", "vmsnapd.progress"}
# Who may import the adapter: the Context, on first use (everything else is given a vmsnapd.ports.HypervisorPort).
IMPORTS_ADAPTER = {"vmsnapd.actions.context"}
# Adapters and the plain data they speak: nothing of the configuration, the rules or the orchestration.
LOW = {"vmsnapd.models", "vmsnapd.hvtypes", "vmsnapd.domxml", "vmsnapd.qemuimg", "vmsnapd.pausewatch",
       "vmsnapd.blockjob", "vmsnapd.runner", "vmsnapd.names", "vmsnapd.overlaynames", "vmsnapd.ownership", "vmsnapd.files",
       "vmsnapd.zfs", "vmsnapd.ramstore", "vmsnapd.hypervisor"}
HIGH = {"vmsnapd.config", "vmsnapd.policy", "vmsnapd.cycle", "vmsnapd.targets", "vmsnapd.journal", "vmsnapd.hooks",
        "vmsnapd.monitoring", "vmsnapd.metrics", "vmsnapd.daemon", "vmsnapd.cli", "vmsnapd.ports"}

CHECK_IMPORTS = """
import importlib, pkgutil, sys
sys.modules["libvirt"] = None
import vmsnapd
failed = []
for info in pkgutil.walk_packages(vmsnapd.__path__, "vmsnapd."):
    if info.name == "vmsnapd.__main__":
        continue
    try:
        importlib.import_module(info.name)
    except ImportError as exc:
        failed.append(f"{info.name} needs libvirt: {exc}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _import_graph() -> dict[str, set[str]]:
    """Every vmsnapd module -> the modules it imports anywhere (also inside functions), by static reading."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
        graph[name] = deps
    return graph


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_every_module_but_the_libvirt_adapter_imports_without_libvirt():
    """One fresh interpreter with libvirt poisoned imports every module: exactly the adapter fails (which also
    shows that the poison works), and any other module that fails is named."""
    done = subprocess.run([sys.executable, "-c", CHECK_IMPORTS], capture_output=True, text=True, timeout=120, cwd=ROOT)
    failed = {line.split(" needs libvirt")[0] for line in done.stdout.splitlines() if " needs libvirt" in line}
    assert failed == NEEDS_LIBVIRT, done.stdout + done.stderr


def test_unit_tests_run_with_libvirt_unimportable():
    with pytest.raises(ImportError):
        import libvirt  # noqa: F401
    with pytest.raises(ImportError):
        importlib.import_module("vmsnapd.hypervisor")
    with pytest.raises(ImportError):
        from vmsnapd import hypervisor  # noqa: F401


def test_only_the_adapter_imports_libvirt_and_only_the_context_imports_the_adapter():
    graph = _import_graph()
    libvirt_users = {m for m, deps in graph.items() if deps & {"libvirt", "libvirt_qemu"}}
    adapter_users = {m for m, deps in graph.items() if "vmsnapd.hypervisor" in deps}
    assert libvirt_users == IMPORTS_LIBVIRT
    assert adapter_users == IMPORTS_ADAPTER


@pytest.mark.parametrize("module", sorted(LOW))
def test_adapters_and_data_import_nothing_above_them(module):
    reached = _reach(_import_graph(), module)
    assert not reached & HIGH, f"{module} reaches {sorted(reached & HIGH)}"
    assert not {m for m in reached if m.startswith("vmsnapd.actions")}, f"{module} reaches {sorted(reached)}"


def test_a_context_without_libvirt_answers_hypervisor_unavailable(tmp_path):
    """Without libvirt-python the hypervisor is unavailable like a stopped libvirtd: a typed error every caller
    handles (the folder check notes it, a VM's cycle fails, plain datasets go on), never a traceback."""
    from vmsnapd.actions.context import Context
    from vmsnapd.config import parse_config
    from vmsnapd.hvtypes import HypervisorUnavailable
    from vmsnapd.runner import Runner

    config = parse_config(f'[daemon]\nstate_dir = "{tmp_path}/s"\noverlay_dir = "{tmp_path}/o"\nram_dir = "{tmp_path}/r"\n')
    ctx = Context(config=config, config_path=tmp_path / "c.toml", runner=Runner(), zfs=None)
    with pytest.raises(HypervisorUnavailable, match="libvirt-python cannot be imported"):
        _ = ctx.hypervisor
    ctx.close()  # nothing was opened: nothing to close
