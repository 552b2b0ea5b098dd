"""`restore --clone NAME` checks the names its clones will take before it makes the first: a NAME libvirt accepts
can give a dataset name ZFS refuses (too long with a further disk's `-<leaf>`, a character ZFS does not allow), and
the clone of the first dataset was left behind when the second name failed (an InvalidName out of the execution)."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from fakehost import FakeHypervisor, TreeZfs
from vmsnapd.actions.context import Context
from vmsnapd.actions.restore import RestoreFailed, plan_restore
from vmsnapd.config import parse_config
from vmsnapd.hvtypes import SHUTOFF
from vmsnapd.runner import Runner

DS, DATA = "tank/VM/web", "tank/VM/web-data"
S1 = "autosnap_2026-11-29_01:00:00_hourly"


def setup(tmp_path):
    zfs = TreeZfs(tmp_path / "mnt", {"tank": [], "tank/VM": [], DS: [S1], DATA: [S1]})
    hv = FakeHypervisor()
    hv.add("web", {"vda": f"{zfs.mountpoint_of(DS)}/web-vda.img", "vdb": f"{zfs.mountpoint_of(DATA)}/web-vdb.img"},
           state=SHUTOFF)
    text = (f'[daemon]\noverlay_dir = "{tmp_path}/overlay"\nstate_dir = "{tmp_path}/state"\n'
            f'ram_dir = "{tmp_path}/ram"\n[datasets."{DS}"]\ndomain = "web"\n[datasets."{DATA}"]\ndomain = "none"\n')
    ctx = Context(config=parse_config(text), config_path=tmp_path / "vmsnapd.toml", runner=Runner(), zfs=zfs,
                  now=lambda: datetime(2026, 11, 30, tzinfo=timezone.utc), _hypervisor=hv)
    return ctx, zfs, hv


@pytest.mark.parametrize("name", ["w" * (255 - len("tank/VM/") - 2), "web-é"])
def test_a_clone_name_zfs_refuses_is_refused_by_the_plan(tmp_path, name):
    """(The fake zfs makes any name; the real adapter's refusal of the second name, after the first clone was made,
    is on the lab: tests/integration/test_restore_drill.py.)"""
    ctx, zfs, hv = setup(tmp_path)
    with pytest.raises(RestoreFailed, match="nothing was changed"):
        plan_restore(ctx, "web", S1, clone=name, no_memory=True, force_stop=False)
    ok = plan_restore(ctx, "web", S1, clone="web-test", no_memory=True, force_stop=False)
    assert ok.clone_datasets == {DS: "tank/VM/web-test", DATA: "tank/VM/web-test-web-data"}
