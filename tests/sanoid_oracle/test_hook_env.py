"""The hook environment against Debian's sanoid itself: the same tree, the same instant, a pre- and a
post-snapshot script in each tool that record the SANOID_* variables they were given; the records must be equal
(per dataset, whatever order the tools run them in). vmsnapd's own VMSNAPD_* variables are its additions and not
compared; the pruning script is not either (sanoid runs it per destroyed snapshot, vmsnapd once per dataset and
pass: docs/configuration.md)."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime

import pytest

from tests.sanoid_oracle.harness import Oracle, missing_tools

pytestmark = pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))

TREE = ["tank", "tank/VM", "tank/VM/web", "tank/VM/db", "tank/data"]
RECORDER = textwrap.dedent("""\
    #!/usr/bin/python3
    import json, os, sys
    with open(sys.argv[1], "a") as log:
        log.write(json.dumps({k: v for k, v in os.environ.items() if k.startswith("SANOID_")}) + "\\n")
    """)


def _conf(kind: str, hook: str, log: str) -> str:
    if kind == "sanoid":
        return (f"[template_vms]\n\thourly = 3\n\tdaily = 2\n\tmonthly = 0\n"
                f"\tpre_snapshot_script = {hook} {log}\n\tpost_snapshot_script = {hook} {log}\n\n"
                "[tank/VM]\n\tuse_template = vms\n\trecursive = yes\n\tprocess_children_only = yes\n\n"
                f"[tank/data]\n\thourly = 2\n\tdaily = 0\n\tmonthly = 0\n\tpre_snapshot_script = {hook} {log}\n")
    return (f'utc = true\n[templates.vms]\nhourly = 3\ndaily = 2\nmonthly = 0\n'
            f'[templates.vms.hooks]\npre_snapshot = ["{hook}", "{log}"]\npost_snapshot = ["{hook}", "{log}"]\n'
            '[datasets."tank/VM"]\nuse_template = ["vms"]\nrecursive = true\nprocess_children_only = true\n'
            'domain = "none"\n'
            f'[datasets."tank/data"]\nhourly = 2\ndaily = 0\nmonthly = 0\ndomain = "none"\n'
            f'[datasets."tank/data".hooks]\npre_snapshot = ["{hook}", "{log}"]\n')


def _records(log) -> list[str]:
    return sorted(json.dumps(json.loads(line), sort_keys=True) for line in log.read_text().splitlines())


def test_hooks_get_sanoids_environment(tmp_path):
    hook = tmp_path / "record-env"
    hook.write_text(RECORDER)
    hook.chmod(0o755)
    logs = {kind: tmp_path / f"{kind}-hooks.jsonl" for kind in ("sanoid", "vmsnapd")}
    oracle = Oracle(tmp_path, TREE, _conf("sanoid", str(hook), str(logs["sanoid"])),
                    _conf("vmsnapd", str(hook), str(logs["vmsnapd"])))

    oracle.step(datetime(2026, 11, 30, 0, 0, 5, tzinfo=UTC))  # hourly and daily due together

    sanoid, vmsnapd = _records(logs["sanoid"]), _records(logs["vmsnapd"])
    assert len(sanoid) == 5, sanoid  # web, db: pre + post; data: pre only
    assert vmsnapd == sanoid
