"""A restore resumes from a RAM dump only when the dump's manifest names the snapshot restored, as `list` pairs them:
the dump is found by the time stamp in its file name, and a snapshot sharing that stamp may hold another instant (a
cycle that found its name taken leaves it out of the manifest). Against the fake host; the same on the lab:
tests/integration/test_restore_drill.py."""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import pytest

from fakehost import FakeHypervisor, TreeZfs
from vmsnapd.actions.context import Context
from vmsnapd.actions.restore import execute_restore, plan_restore
from vmsnapd.config import parse_config
from vmsnapd.hvtypes import SHUTOFF
from vmsnapd.ramstore import RamManifest
from vmsnapd.runner import Runner

DS = "tank/VM/web"
STAMP = "2026-11-29_01:00:00"
HOURLY = f"autosnap_{STAMP}_hourly"
DAILY = f"autosnap_{STAMP}_daily"
LATER = "autosnap_2026-11-29_02:00:00_hourly"
NOW = datetime(2026, 11, 30, 1, 2, 3, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch):
    monkeypatch.setattr("os.fsync", lambda fd: None)


def setup(tmp_path, snapshots: list[str], manifest_names: list[str], *, manifest_stamp: str = STAMP,
          manifest_datasets: tuple[str, ...] = (DS,)):
    zfs = TreeZfs(tmp_path / "mnt", {"tank": [], "tank/VM": [], DS: snapshots})
    hv = FakeHypervisor()
    hv.add("web", {"vda": f"{zfs.mountpoint_of(DS)}/web-vda.img"}, state=SHUTOFF)
    folder = tmp_path / "ram" / "web"
    folder.mkdir(parents=True, mode=0o700)
    data = b"RAM" * 100
    (folder / f"web_{STAMP}.mem").write_bytes(data)
    manifest = RamManifest(domain="web", stamp=manifest_stamp, datasets=list(manifest_datasets),
                           snapshot_names=manifest_names,
                           domain_xml="<domain/>", method="overlay", live=True, quiesced=False, size=len(data),
                           raw_size=len(data), sha256=hashlib.sha256(data).hexdigest(), compression="none",
                           created_at="2026-11-29T01:00:01+00:00", vmsnapd_version="0")
    (folder / f"web_{STAMP}.json").write_text(manifest.model_dump_json())
    text = (f'[daemon]\noverlay_dir = "{tmp_path}/overlay"\nstate_dir = "{tmp_path}/state"\n'
            f'ram_dir = "{tmp_path}/ram"\n[datasets."{DS}"]\ndomain = "web"\n')
    ctx = Context(config=parse_config(text), config_path=tmp_path / "vmsnapd.toml", runner=Runner(), zfs=zfs,
                  now=lambda: NOW, _hypervisor=hv)
    return ctx, zfs, hv


def test_a_snapshot_the_manifest_does_not_name_boots_from_its_own_disks(tmp_path):
    """The cycle took only the daily (its hourly name was taken); an hourly of that stamp made later is restored:
    its own disks, booted — not the cycle's RAM (it is of another instant), not the daily's disks."""
    ctx, zfs, hv = setup(tmp_path, [DAILY, HOURLY, LATER], [DAILY])
    plan = plan_restore(ctx, "web", HOURLY, clone=None, no_memory=False, force_stop=False)
    assert not plan.resume_from_memory and plan.ram_dump is None
    assert any("does not name" in w and HOURLY in w for w in plan.warnings), plan.warnings
    assert plan.entries[0].snapshot == HOURLY

    execute_restore(ctx, plan)

    assert hv.verbs("start", "restore_memory") == [("start", "web")]
    assert zfs.sets[DS].snapshots == [DAILY, HOURLY]


def test_the_cycles_own_snapshot_resumes_on_the_cycles_disks(tmp_path):
    """Restoring the daily clones the daily (the manifest's name), not the later hourly that shares its stamp."""
    ctx, zfs, hv = setup(tmp_path, [DAILY, HOURLY, LATER], [DAILY])
    plan = plan_restore(ctx, "web", DAILY, clone=None, no_memory=False, force_stop=False)
    assert plan.resume_from_memory and not plan.warnings
    assert plan.entries[0].snapshot == DAILY and plan.newer_snapshots_kept_aside == [f"{DS}@{HOURLY}", f"{DS}@{LATER}"]

    execute_restore(ctx, plan)

    assert [v[0] for v in hv.verbs("start", "restore_memory")] == ["restore_memory"]
    assert zfs.sets[DS].snapshots == [DAILY]


def test_the_cycles_other_periods_still_come_along(tmp_path):
    ctx, _zfs, _hv = setup(tmp_path, [HOURLY, DAILY, LATER], [HOURLY, DAILY])
    plan = plan_restore(ctx, "web", HOURLY, clone=None, no_memory=False, force_stop=False)
    assert plan.resume_from_memory and plan.entries[0].snapshot == DAILY


def test_a_manifest_of_another_cycle_is_not_paired(tmp_path):
    """A dump file renamed (or a manifest copied) by hand: the manifest's own stamp is another cycle's."""
    ctx, _zfs, _hv = setup(tmp_path, [HOURLY, LATER], [HOURLY], manifest_stamp="2026-11-29_00:00:00")
    plan = plan_restore(ctx, "web", HOURLY, clone=None, no_memory=False, force_stop=False)
    assert not plan.resume_from_memory and any("another cycle" in w for w in plan.warnings), plan.warnings
    from vmsnapd.actions.restore import pairing_problem

    (dump,) = ctx.ram_store.dumps()
    assert "another cycle" in pairing_problem(dump, HOURLY)
    assert "does not name" in pairing_problem(dump.model_copy(update={"stamp": "2026-11-29_00:00:00"}), LATER)


def test_a_clone_takes_the_definition_only_from_a_paired_dump(tmp_path):
    ctx, _zfs, _hv = setup(tmp_path, [DAILY, HOURLY], [DAILY])
    assert plan_restore(ctx, "web", HOURLY, clone="web2", no_memory=False, force_stop=False).ram_dump is None
    assert plan_restore(ctx, "web", DAILY, clone="web2", no_memory=False, force_stop=False).ram_dump


def test_on_a_backup_host_too_only_a_paired_dump_is_resumed(tmp_path):
    """The domain is not defined here (docs/replication.md): the dump's saved definition is used, its RAM only for
    the snapshots its manifest names."""
    ctx, _zfs, hv = setup(tmp_path, [DAILY, HOURLY], [DAILY])
    del hv.domains["web"]
    unpaired = plan_restore(ctx, "web", HOURLY, clone=None, no_memory=False, force_stop=False)
    assert unpaired.define_xml and not unpaired.resume_from_memory
    assert any("does not name" in w for w in unpaired.warnings) and unpaired.steps[-1].startswith("boot web")
    paired = plan_restore(ctx, "web", DAILY, clone=None, no_memory=False, force_stop=False)
    assert paired.define_xml and paired.resume_from_memory and not paired.warnings


def test_a_dump_stays_paired_after_the_vms_dataset_was_renamed(tmp_path):
    """`zfs rename tank/VM/web-old tank/VM/web` (and the config changed along): the snapshots are the cycle's own,
    only under another name; the manifest still names the old one."""
    ctx, _zfs, _hv = setup(tmp_path, [HOURLY, DAILY, LATER], [HOURLY, DAILY], manifest_datasets=("tank/VM/web-old",))
    plan = plan_restore(ctx, "web", HOURLY, clone=None, no_memory=False, force_stop=False)
    assert plan.resume_from_memory and not plan.warnings and plan.entries[0].snapshot == DAILY


# `list`, `list --json` and `status` say whether a snapshot has RAM by the same rule restore resumes by
# (vmsnapd.rampairing): the dump of the dataset's VM at the snapshot's stamp whose manifest names the snapshot.


def _ram_by_point(ctx) -> dict[str, str | None]:
    from vmsnapd.actions.restore import restore_points

    return {p.snapshot: p.ram_dump for p in restore_points(ctx, None)}


def test_list_shows_the_ram_restore_resumes_after_the_dataset_was_renamed(tmp_path):
    ctx, _zfs, _hv = setup(tmp_path, [HOURLY, DAILY, LATER], [HOURLY, DAILY], manifest_datasets=("tank/VM/web-old",))
    points = _ram_by_point(ctx)
    assert points[HOURLY] and points[DAILY] and points[LATER] is None, points
    assert plan_restore(ctx, "web", HOURLY, clone=None, no_memory=False, force_stop=False).resume_from_memory
    from vmsnapd.actions.restore import restore_points

    assert [p.ram_dump is not None for p in restore_points(ctx, "web")] == [True, True, False]


def test_status_counts_the_dump_of_a_renamed_dataset(tmp_path):
    from vmsnapd.actions.status import host_status

    ctx, zfs, _hv = setup(tmp_path, [HOURLY, DAILY, LATER], [HOURLY, DAILY], manifest_datasets=("tank/VM/web-old",))
    zfs.pool_capacity = lambda pool: 10
    (entry,) = host_status(ctx).datasets
    assert entry.ram_dumps == 1 and entry.ram_bytes == 300


def test_list_shows_no_ram_where_restore_boots(tmp_path):
    """A snapshot its manifest does not name, and a manifest of another cycle: restore boots, list says so."""
    ctx, _zfs, _hv = setup(tmp_path, [DAILY, HOURLY], [DAILY])
    assert _ram_by_point(ctx) == {DAILY: str(tmp_path / "ram" / "web" / f"web_{STAMP}.mem"), HOURLY: None}
    ctx, zfs, _hv = setup(tmp_path / "other", [HOURLY, LATER], [HOURLY], manifest_stamp="2026-11-29_00:00:00")
    zfs.pool_capacity = lambda pool: 10
    assert not plan_restore(ctx, "web", HOURLY, clone=None, no_memory=False, force_stop=False).resume_from_memory
    assert _ram_by_point(ctx) == {HOURLY: None, LATER: None}
    from vmsnapd.actions.status import host_status

    assert host_status(ctx).datasets[0].ram_dumps == 0


def test_list_still_lists_when_libvirt_does_not_answer(tmp_path, caplog):
    """A `domain = "auto"` dataset is then taken for the VM named like it (a warning says so); a named one is its."""
    from vmsnapd.hvtypes import HypervisorError

    ctx, _zfs, hv = setup(tmp_path, [DAILY, HOURLY], [DAILY])
    hv.fail("domain_names", HypervisorError("libvirtd is not running"))
    assert _ram_by_point(ctx)[DAILY] and "libvirt does not answer" in caplog.text
    from vmsnapd.config import parse_config

    ctx.config = parse_config(f'[daemon]\noverlay_dir = "{tmp_path}/overlay"\nstate_dir = "{tmp_path}/state"\n'
                              f'ram_dir = "{tmp_path}/ram"\n[datasets."{DS}"]\ndomain = "auto"\n')
    hv.fail("domain_names", HypervisorError("libvirtd is not running"))
    assert _ram_by_point(ctx) == {DAILY: str(tmp_path / "ram" / "web" / f"web_{STAMP}.mem"), HOURLY: None}
