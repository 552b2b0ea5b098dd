"""restore --group when one member's RAM dump is damaged (drill, session 19): the group's restore verifies every
member first, so a damaged dump refuses the whole group with that member's reason and nothing is changed — both
guests keep running on their datasets as they were. (The group's cycle and restore themselves:
tests/integration/test_groups.py.)"""
from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.lab]

ONE_HOURLY = {"hourly": 3, "daily": 0, "monthly": 0}


def test_a_damaged_member_dump_refuses_the_group_restore_untouched(lab, vm_factory, vmsnapd_env):
    group = lab.unique_name("g")
    app, db = vm_factory(), vm_factory()
    env = vmsnapd_env
    for vm in (app, db):
        env.datasets[vm.disk.dataset.name] = {**ONE_HOURLY, "domain": vm.name, "group": group, "method": "pause",
                                              "quiesce": "off"}
    env.run("snapshot", app.name)
    (snap,) = lab.snapshot_names(db.disk.dataset.name)
    (point,) = json.loads(env.run("list", db.name, "--json").stdout)
    dump = next((env.ram_dir / db.name).glob("*.mem"))
    with dump.open("r+b") as f:  # one byte flipped in the middle: the checksum no longer matches
        f.seek(dump.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    datasets_before = lab.zfs("list", "-H", "-o", "name", "-r", app.disk.dataset.name.split("/")[0])

    proc = env.run("restore", "--group", group, snap, "--force-stop", "--yes", expect=1)

    out = proc.stdout + proc.stderr
    assert f"group {group}: {db.name}:" in out and "nothing was changed" in out, out
    assert point["ram_dump"], point
    assert lab.zfs("list", "-H", "-o", "name", "-r", app.disk.dataset.name.split("/")[0]) == datasets_before
    for vm in (app, db):
        assert vm.dom.isActive()
        lab.wait_counter_advances(vm, by=3)
