"""Journal records across versions (trust drill, upgrade/downgrade): an older vmsnapd's records are read and acted
on; a record with fields or a state this version does not know (a newer vmsnapd's, left by a crash before a
downgrade) is refused with a clear reason and left exactly as it is — never acted on with part of it dropped."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmsnapd.actions.context import Context, Survey
from vmsnapd.actions.folders import FolderCheck
from vmsnapd.actions.recover import recover
from vmsnapd.config import parse_config, resolve
from vmsnapd.hvtypes import DomainNotFound
from vmsnapd.journal import CycleRecord, CycleState, Journal, NewerRecord, read_record
from vmsnapd.runner import Runner
from vmsnapd.zfs import DatasetInfo, ZfsListing

STAMP = "2026-11-29_01:00:00"
CYCLE_ID = f"tank/web-{STAMP}"
# A record as the first journal format wrote it (a40f287): no quiesced, pause_ms or ram_dump yet.
OLDEST = {"cycle_id": CYCLE_ID, "domain": "web", "datasets": ["tank/web"],
          "snapshot_names": [f"autosnap_{STAMP}_hourly"], "stamp": STAMP, "method": "overlay", "state": "frozen",
          "overlays": [], "ram_file": None, "fs_frozen": False, "paused_by_us": False, "pid": 42,
          "started_at": "2026-11-29T01:00:00.000+00:00", "updated_at": "2026-11-29T01:00:00.000+00:00",
          "error": None}


def test_a_record_of_the_first_format_is_read():
    record = read_record(json.dumps(OLDEST).encode())
    assert record.state is CycleState.FROZEN and not record.quiesced and record.ram_dump is None


def test_a_field_this_version_does_not_know_is_refused_with_the_reason():
    with pytest.raises(NewerRecord, match=r"field\(s\) 'staging_file' unknown to this vmsnapd: written by a newer"):
        read_record(json.dumps({**OLDEST, "staging_file": "/run/vmsnapd/staging/web.mem"}).encode())


def test_a_state_this_version_does_not_know_is_refused_with_the_reason():
    with pytest.raises(NewerRecord, match="state 'rolling_back' unknown to this vmsnapd"):
        read_record(json.dumps({**OLDEST, "state": "rolling_back"}).encode())


field_names = st.text(min_size=1, max_size=12).filter(lambda name: name not in CycleRecord.model_fields)
json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=st.dictionaries(field_names, json_scalars, min_size=1, max_size=3),
       known=st.sampled_from(sorted(CycleRecord.model_fields)), drop=st.booleans())
def test_a_newer_record_is_listed_unreadable_and_left_byte_for_byte(tmp_path_factory, extra, known, drop):
    journal = Journal(tmp_path_factory.mktemp("state"))
    raw = {**OLDEST, **extra}
    if drop:  # a newer version may also have dropped a field this one needs: still a clear refusal
        raw.pop(known, None)
    journal.directory.mkdir(mode=0o700)
    path = journal.path_of(CYCLE_ID)
    path.write_bytes(data := json.dumps(raw).encode())
    scan = journal.scan()
    assert scan.records == [] and [u.path for u in scan.unreadable] == [path]
    assert path.read_bytes() == data


class NoDomains:
    """A hypervisor on which the record's domain is gone (what an old recover would then do: finish the record)."""

    def all_domain_disks(self):
        return {}

    def domain_names(self):
        return []

    def exists(self, name):
        return False

    def state(self, name):
        raise DomainNotFound(name)

    def snapshot_records(self, name):
        raise DomainNotFound(name)


def _host_with_a_ram_file(tmp_path: Path) -> tuple[Context, Survey, Journal, Path]:
    """A host with no domain, vmsnapd's folders, one managed dataset and a fresh RAM file of cycle CYCLE_ID."""
    overlay_dir = tmp_path / "overlay"
    overlay_dir.mkdir()
    ram_file = overlay_dir / f"web_{STAMP}.mem"
    ram_file.write_bytes(b"RAM")
    config = parse_config(f'[daemon]\noverlay_dir = "{overlay_dir}"\nstate_dir = "{tmp_path}/state"\n'
                          f'ram_dir = "{tmp_path}/ram"\n[datasets."tank/web"]\ndomain = "web"\n')
    now = datetime(2026, 11, 29, 2, tzinfo=timezone.utc)
    listing = ZfsListing(datasets={"tank/web": DatasetInfo("tank/web", str(tmp_path / "tank/web"), now)})
    survey = Survey(listing=listing, policies=resolve(config, listing.datasets))
    ctx = Context(config=config, config_path=tmp_path / "c.toml", runner=Runner(), zfs=None, _hypervisor=NoDomains())
    journal = Journal(ctx.state_dir)
    journal.directory.mkdir(parents=True, mode=0o700)
    return ctx, survey, journal, ram_file


def test_recover_reports_a_newer_record_and_touches_nothing_it_names(tmp_path: Path):
    ctx, survey, journal, ram_file = _host_with_a_ram_file(tmp_path)
    record_path = journal.path_of(CYCLE_ID)
    record_path.write_text(json.dumps({**OLDEST, "ram_file": str(ram_file), "fenced_disks": ["vdb"]}))

    report = recover(ctx, survey, folders=FolderCheck())

    assert len(report.errors) == 1 and "'fenced_disks' unknown to this vmsnapd" in report.errors[0], report
    assert record_path.exists() and ram_file.exists(), "a record this version cannot read in full is not acted on"


def test_a_record_under_another_file_name_is_not_acted_on(tmp_path: Path):
    """A copy or a renamed record (`x.json`): `finish` removes the cycle's own file name only, so recover acted on
    it and said 'closed' again at every pass, never closing it. Now it is reported and left alone."""
    ctx, survey, journal, ram_file = _host_with_a_ram_file(tmp_path)
    copy = journal.directory / "copy of web.json"
    copy.write_text(json.dumps({**OLDEST, "ram_file": str(ram_file)}))

    for _ in range(2):
        report = recover(ctx, survey, folders=FolderCheck())
        assert report.actions == [] and len(report.errors) == 1, report
        assert "is not the one vmsnapd gives cycle" in report.errors[0]
    assert copy.exists() and ram_file.exists()
    # Under its own name the same record is recovered and closed.
    copy.rename(journal.path_of(CYCLE_ID))
    report = recover(ctx, survey, folders=FolderCheck())
    assert report.errors == [] and not ram_file.exists() and journal.pending() == []
