"""recover() wiring of the ownership plan, fast, with a fake hypervisor (the lab proof is
tests/integration/test_recover_ownership.py): which verbs are called on which files, and which are only reported."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from vmsnapd.actions.context import Context, Survey
from vmsnapd.actions.folders import FolderCheck
from vmsnapd.actions.recover import recover
from vmsnapd.config import parse_config, resolve
from vmsnapd.hvtypes import PAUSED, RUNNING, SHUTOFF, DomainNotFound, HypervisorError
from vmsnapd.journal import CycleRecord, Journal, OverlayRecord
from vmsnapd.ownership import SnapshotRecord
from vmsnapd.overlaynames import overlay_file_name
from vmsnapd.runner import Runner
from vmsnapd.zfs import DatasetInfo, ZfsListing

STAMP = "2026-11-29_01:00:00"
NOW = datetime(2026, 11, 29, tzinfo=timezone.utc)


def _xml(disks: list[tuple[str, str]]) -> str:
    body = "".join(f"<disk type='file' device='disk'><driver type='qcow2'/><source file='{p}'/>"
                   f"<target dev='{t}'/></disk>" for t, p in disks)
    return f"<domain><devices>{body}</devices></domain>"


class FakeHypervisor:
    def __init__(self, domains: dict, backing: dict[str, str]):
        self.domains = domains  # name -> {"state", "live", "persistent", "snapshots"}
        self.backing = backing
        self.calls: list[tuple] = []

    def _get(self, name):
        if name not in self.domains:
            raise DomainNotFound(name)
        return self.domains[name]

    def domain_names(self):
        return sorted(self.domains)

    def all_domain_disks(self):
        return {n: list(dict.fromkeys(d["live"] + d["persistent"])) for n, d in self.domains.items()}

    def state(self, name):
        return self._get(name)["state"]

    def exists(self, name):
        return name in self.domains

    def disks(self, name):
        from vmsnapd.domxml import parse_disks
        return parse_disks(_xml(self._get(name)["live"]))

    def xml(self, name, inactive=False):
        d = self._get(name)
        return _xml(d["persistent"] if inactive else d["live"])

    def snapshot_records(self, name):
        return list(self._get(name).get("snapshots", []))

    def backing_of(self, path):
        if path not in self.backing:
            raise HypervisorError(f"{path} has no backing file")
        return self.backing[path], "raw"

    def commit_active(self, name, target):
        self.calls.append(("commit_active", name, target))

    def commit_offline(self, name, target, overlay):
        self.calls.append(("commit_offline", name, target, overlay))
        return self.backing[overlay]

    def commit_overlay_file(self, overlay):
        self.calls.append(("commit_overlay_file", overlay))
        return self.backing[overlay]

    def repoint_definition(self, name, target, overlay):
        self.calls.append(("repoint_definition", name, target, overlay))
        return self.backing[overlay]

    def delete_snapshot_metadata(self, name, snapshots):
        self.calls.append(("delete_snapshot_metadata", name, tuple(snapshots)))
        return list(snapshots)

    def fs_thaw(self, name):
        return 0

    def resume(self, name):
        self.calls.append(("resume", name))


def _setup(tmp_path: Path, domains: dict, backing: dict[str, str]) -> tuple[Context, Survey, FakeHypervisor]:
    od = tmp_path / "overlay"
    od.mkdir(exist_ok=True)
    text = (f'[daemon]\noverlay_dir = "{od}"\nstate_dir = "{tmp_path}/state"\nram_dir = "{tmp_path}/ram"\n'
            + "".join(f'[datasets."tank/{n}"]\ndomain = "{n}"\n' for n in ("web", "db", "app")))
    config = parse_config(text)
    listing = ZfsListing(datasets={f"tank/{n}": DatasetInfo(f"tank/{n}", str(tmp_path / "tank" / n), NOW)
                                   for n in ("web", "db", "app")})
    survey = Survey(listing=listing, policies=resolve(config, listing.datasets))
    fake = FakeHypervisor(domains, backing)
    ctx = Context(config=config, config_path=tmp_path / "c.toml", runner=Runner(), zfs=None, _hypervisor=fake)
    return ctx, survey, fake


def _file(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"data")
    return str(path)


def test_only_vmsnapds_overlays_are_committed(tmp_path):
    od = tmp_path / "overlay"
    web_base = _file(tmp_path / "tank/web/web-vda.img")
    app_base = _file(tmp_path / "tank/app/app-vda.img")
    db_base = _file(tmp_path / "tank/db/db-vda.img")
    web_ov = _file(od / overlay_file_name("web", "vda", STAMP))
    app_ov = _file(od / overlay_file_name("app", "vda", STAMP))
    db_hand = _file(od / "handmade.qcow2")
    clone = _file(od / "clone.qcow2")
    clone_base = _file(od / "base.qcow2")
    domains = {
        "web": {"state": RUNNING, "live": [("vda", web_ov)], "persistent": [("vda", web_ov)],
                "snapshots": [SnapshotRecord("handmade", (("vda", web_ov),)), SnapshotRecord("admins")]},
        "app": {"state": RUNNING, "live": [("vda", app_base)], "persistent": [("vda", app_ov)]},
        "db": {"state": SHUTOFF, "live": [("vda", db_hand)], "persistent": [("vda", db_hand)],
               "snapshots": [SnapshotRecord("script", (("vda", db_hand),))]},
        "clone": {"state": SHUTOFF, "live": [("vda", clone)], "persistent": [("vda", clone)]},
    }
    backing = {web_ov: web_base, app_ov: app_base, db_hand: db_base, clone: clone_base}
    ctx, survey, fake = _setup(tmp_path, domains, backing)

    report = recover(ctx, survey, folders=FolderCheck())

    assert report.errors == []
    assert sorted(fake.calls) == sorted([
        ("commit_active", "web", "vda"),
        ("delete_snapshot_metadata", "web", ("handmade",)),
        ("repoint_definition", "app", "vda", app_ov),
    ])
    assert not Path(web_ov).exists() and not Path(app_ov).exists()
    for kept in (db_hand, clone, clone_base, web_base, app_base, db_base):
        assert Path(kept).read_bytes() == b"data"
    assert any("db disk vda" in w and "handmade.qcow2" in w for w in report.warnings), report.warnings
    assert any("clone disk vda" in w and "not managed" in w for w in report.warnings), report.warnings
    assert any("snapshot script of db" in w for w in report.warnings), report.warnings


def test_journal_record_is_proof_but_its_files_are_checked(tmp_path):
    """A record's overlay is committed only when its header names the recorded base; a record naming a file
    that is not vmsnapd's is never deleted (a damaged or forged record)."""
    od = tmp_path / "overlay"
    web_base = _file(tmp_path / "tank/web/web-vda.img")
    web_ov = _file(od / overlay_file_name("web", "vda", STAMP))
    victim = _file(tmp_path / "etc" / "important")
    domains = {"web": {"state": PAUSED, "live": [("vda", web_ov)], "persistent": [("vda", web_ov)]}}
    ctx, survey, fake = _setup(tmp_path, domains, {web_ov: "/somewhere/else.img"})
    Journal(ctx.state_dir).begin(CycleRecord(
        cycle_id=f"web-{STAMP}", domain="web", datasets=["tank/web"], snapshot_names=[], stamp=STAMP,
        method="overlay", state="frozen", ram_file=victim, paused_by_us=True,
        overlays=[OverlayRecord(target="vda", overlay_path=web_ov, base_path=web_base)]))

    report = recover(ctx, survey, folders=FolderCheck())

    assert ("commit_active", "web", "vda") not in fake.calls
    assert any("listed in the journal with base" in w for w in report.warnings), report.warnings
    assert Path(victim).read_bytes() == b"data" and Path(web_ov).exists()
    assert any(str(victim) in w and "not a file vmsnapd makes" in w for w in report.warnings), report.warnings


def test_vanished_domain_overlay_merged_only_onto_recorded_base(tmp_path):
    od = tmp_path / "overlay"
    base = _file(tmp_path / "tank/web/web-vda.img")
    good = _file(od / overlay_file_name("web", "vda", STAMP))
    bad = _file(od / overlay_file_name("web", "vdb", STAMP))
    ctx, survey, fake = _setup(tmp_path, {}, {good: base, bad: "/elsewhere/shared-base.img"})
    Journal(ctx.state_dir).begin(CycleRecord(
        cycle_id=f"web-{STAMP}", domain="web", datasets=["tank/web"], snapshot_names=[], stamp=STAMP,
        method="overlay", state="frozen",
        overlays=[OverlayRecord(target="vda", overlay_path=good, base_path=base),
                  OverlayRecord(target="vdb", overlay_path=bad, base_path=base)]))

    report = recover(ctx, survey, folders=FolderCheck())

    assert fake.calls == [("commit_overlay_file", good)]
    assert any(bad in e and "not merged" in e for e in report.errors), report.errors
    assert Path(bad).exists()


def test_a_pass_goes_on_from_the_folder_checks_reading_of_the_domains(tmp_path):
    """A pass reads every domain's disks once (the folder check) and recover goes on from that reading: it asks
    libvirt neither for the domains' names nor for their disks again — yet brings back what that reading shows."""
    od = tmp_path / "overlay"
    web_base = _file(tmp_path / "tank/web/web-vda.img")
    web_ov = _file(od / overlay_file_name("web", "vda", STAMP))
    domains = {"web": {"state": RUNNING, "live": [("vda", web_ov)], "persistent": [("vda", web_ov)]}}
    ctx, survey, fake = _setup(tmp_path, domains, {web_ov: web_base})
    reading = fake.all_domain_disks()

    def asked_again():
        raise AssertionError("libvirt asked again for what the folder check read")
    fake.all_domain_disks = fake.domain_names = asked_again

    report = recover(ctx, survey, folders=FolderCheck(domain_disks=reading))

    assert report.errors == [] and fake.calls == [("commit_active", "web", "vda")]
    assert not Path(web_ov).exists()
