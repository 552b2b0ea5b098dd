"""Restore planning is pure: facts in, a plan (or a refusal naming the reason) out, before anything changes."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsnapd.actions.restore import (
    AsideEntry,
    DumpCheck,
    RestoreFacts,
    RestoreFailed,
    UndoFacts,
    Verb,
    check_dump,
    decide,
    undo_steps,
)
from vmsnapd.config import parse_config, resolve
from vmsnapd.names import aside_name, is_aside, original_of_aside
from vmsnapd.ramstore import RamDump, RamManifest
from vmsnapd.runner import Runner

DS = "tank/VM/web"
S1 = "autosnap_2026-11-29_01:00:00_hourly"
S1D = "autosnap_2026-11-29_01:00:00_daily"
S2 = "autosnap_2026-11-29_02:00:00_hourly"
STAMP = "20261130T010203"


def facts(**kw) -> RestoreFacts:
    base = {"domain": "web", "datasets": [DS], "vm_state": "shutoff", "snapshots": {DS: [S1, S1D, S2]},
            "existing": {"tank/VM", DS}}
    base.update(kw)
    return RestoreFacts(**base)


def plan(f: RestoreFacts, snapshot=S1, **kw):
    args = {"clone": None, "no_memory": False, "force_stop": False, "stamp": STAMP}
    args.update(kw)
    return decide(f, snapshot, **args)


def good_dump(**kw) -> DumpCheck:
    return DumpCheck(path="/ram/web/web_2026-11-29_01:00:00.mem", **kw)


def test_in_place_plan_sets_the_dataset_aside_and_keeps_newer_snapshots():
    p = plan(facts())
    (entry,) = p.entries
    assert entry.aside == f"{DS}.vmsnapd-replaced-{STAMP}" and entry.snapshot == S1D  # the cycle's last
    assert p.newer_snapshots_kept_aside == [f"{DS}@{S2}"]
    verbs = [s.verb for s in entry.forward_steps()]
    assert verbs == [Verb.RENAME, Verb.CLONE, Verb.PROMOTE]
    assert not any("destroy" in step for step in p.steps)
    assert p.steps[-1].startswith("boot web")


def test_missing_snapshot_on_any_dataset_refuses():
    other = "tank/VM/web-data"
    f = facts(datasets=[DS, other], snapshots={DS: [S1], other: [S2]})
    with pytest.raises(RestoreFailed, match=f"does not exist on {other}"):
        plan(f)


@pytest.mark.parametrize("problem", ["RAM dump x fails its checksum (damaged)", "RAM dump x does not decompress"])
def test_a_damaged_dump_refuses_before_anything_but_no_memory_boots(problem):
    f = facts(dump=good_dump(problem=problem), vm_state="running")
    with pytest.raises(RestoreFailed, match="nothing was changed"):
        plan(f, force_stop=True)
    p = plan(f, force_stop=True, no_memory=True)
    assert not p.resume_from_memory and p.stop_first


def test_no_room_to_decompress_refuses():
    f = facts(dump=good_dump(compressed=True, raw_size=4 * 2**30), free_bytes=2**30)
    with pytest.raises(RestoreFailed, match="not enough space"):
        plan(f)
    ok = plan(facts(dump=good_dump(compressed=True, raw_size=2**20), free_bytes=2**30))
    assert ok.resume_from_memory and any("decompression test" in v for v in ok.verified)


def test_running_vm_needs_force_stop_and_earlier_aside_blocks():
    with pytest.raises(RestoreFailed, match="--force-stop"):
        plan(facts(vm_state="running"))
    with pytest.raises(RestoreFailed, match="--undo web --yes"):
        plan(facts(aside_kept=True))
    with pytest.raises(RestoreFailed, match="pool's root"):
        plan(facts(datasets=["tank"], snapshots={"tank": [S1]}))


def test_local_mountpoint_moves_aside_and_the_clone_takes_it():
    p = plan(facts(mountpoint_local={DS: "/srv/web"}))
    steps = p.entries[0].forward_steps()
    assert steps[1].verb == Verb.SET_MOUNTPOINT and steps[1].arg == f"/srv/web.vmsnapd-replaced-{STAMP}"
    assert steps[2].verb == Verb.CLONE and steps[2].mountpoint == "/srv/web"


def test_children_move_back_under_the_restored_dataset_parents_first():
    child = f"{DS}/disk2"
    f = facts(datasets=[child, DS], snapshots={DS: [S1], child: [S1]}, existing={"tank/VM", DS, child})
    p = plan(f)
    assert [e.dataset for e in p.entries] == [DS, child]
    last = p.entries[0].forward_steps()[-1]
    assert last.verb == Verb.RENAME and last.dataset == f"{p.entries[0].aside}/disk2" and last.arg == child


def test_clone_plan_touches_no_original():
    p = plan(facts(vm_state="running"), clone="web2")
    assert p.clone_datasets == {DS: "tank/VM/web2"} and not p.entries and not p.stop_first


ENTRY = AsideEntry(dataset=DS, aside=f"{DS}.vmsnapd-replaced-{STAMP}", snapshot=S1, children=["disk2"])


def test_undo_after_a_complete_restore_promotes_back_and_discards_the_clone():
    f = UndoFacts(dataset_exists=True, aside_exists=True, aside_origin=f"{DS}@{S1}",
                  dataset_children=("disk2",), dataset_snapshots=("autosnap_2026-11-28_01:00:00_hourly", S1, S2))
    steps = undo_steps(ENTRY, f)
    assert [(s.verb, s.dataset) for s in steps] == [
        (Verb.PROMOTE, ENTRY.aside), (Verb.RENAME, f"{DS}/disk2"), (Verb.DESTROY_TREE, DS), (Verb.RENAME, ENTRY.aside)]
    assert steps[-1].arg == DS


def test_undo_of_an_interrupted_restore_only_puts_back_what_happened():
    assert undo_steps(ENTRY, UndoFacts(dataset_exists=True, aside_exists=False)) == []
    renamed_only = undo_steps(ENTRY, UndoFacts(dataset_exists=False, aside_exists=True))
    assert [s.verb for s in renamed_only] == [Verb.RENAME]
    cloned = undo_steps(ENTRY, UndoFacts(dataset_exists=True, aside_exists=True, dataset_origin=f"{ENTRY.aside}@{S1}"))
    assert [s.verb for s in cloned] == [Verb.DESTROY_TREE, Verb.RENAME]


def test_undo_refuses_what_is_not_provably_the_restores():
    with pytest.raises(RestoreFailed, match="not the clone"):
        undo_steps(ENTRY, UndoFacts(dataset_exists=True, aside_exists=True, dataset_origin="tank/other@x"))
    mine = {"dataset_exists": True, "aside_exists": True, "aside_origin": f"{DS}@{S1}"}
    with pytest.raises(RestoreFailed, match="did not take"):
        undo_steps(ENTRY, UndoFacts(**mine, dataset_snapshots=(S1, "manual-before-upgrade")))
    with pytest.raises(RestoreFailed, match="child datasets"):
        undo_steps(ENTRY, UndoFacts(**mine, dataset_snapshots=(S1,), dataset_children=("disk2", "new")))
    with pytest.raises(RestoreFailed, match="neither"):
        undo_steps(ENTRY, UndoFacts(dataset_exists=False, aside_exists=False))


def test_aside_names_are_never_managed():
    config = parse_config('[datasets."tank/VM"]\nrecursive = true\nprocess_children_only = true\n')
    aside = aside_name(DS, STAMP)
    policies = resolve(config, ["tank/VM", DS, aside, f"{aside}/disk2"])
    assert list(policies) == [DS]
    assert original_of_aside(f"{aside}/disk2") == f"{DS}/disk2"


@given(st.text(alphabet="abcXYZ09_.:- ", min_size=1, max_size=20))
def test_aside_name_round_trips(leaf):
    if leaf.strip(" ") != leaf or leaf in (".", ".."):
        return
    name = aside_name(f"tank/{leaf}", STAMP)
    assert is_aside(name) and original_of_aside(name) == f"tank/{leaf}" and not is_aside(f"tank/{leaf}")


def _dump(tmp_path: Path, data: bytes, xml: str = "<domain/>") -> RamDump:
    import hashlib
    path = tmp_path / "web_2026-11-29_01:00:00.mem"
    path.write_bytes(data)
    manifest = RamManifest(domain="web", stamp="2026-11-29_01:00:00", datasets=[DS], snapshot_names=[S1],
                           domain_xml=xml, method="overlay", live=True, quiesced=False, size=len(data),
                           raw_size=len(data), sha256=hashlib.sha256(data).hexdigest(), compression="none",
                           created_at="2026-11-29T01:00:00+00:00", vmsnapd_version="0")
    return RamDump(domain="web", stamp="2026-11-29_01:00:00", path=path, manifest_path=tmp_path / "m.json",
                   manifest=manifest, size=len(data))


def test_check_dump_finds_a_flipped_byte_and_bad_xml(tmp_path):
    from vmsnapd.ramstore import RamStore

    store = RamStore(tmp_path, Runner())
    dump = _dump(tmp_path, b"x" * 1000)
    assert check_dump(store, dump, full=True).problem is None
    dump.path.write_bytes(b"x" * 999 + b"y")
    assert "checksum" in check_dump(store, dump, full=True).problem
    assert check_dump(store, dump, full=False).problem is None  # --no-memory / clone: content not needed
    bad_xml = _dump(tmp_path, b"x", xml="<domain>")
    assert "does not parse" in check_dump(store, bad_xml, full=False).problem


@pytest.mark.skipif(not Path("/usr/bin/zstd").exists(), reason="zstd binary not installed")
def test_check_dump_decompresses_a_zstd_dump_whose_checksum_matches(tmp_path):
    import hashlib
    import subprocess

    from vmsnapd.ramstore import RamStore

    raw = tmp_path / "raw"
    raw.write_bytes(bytes(range(256)) * 4000)
    packed = tmp_path / "web_2026-11-29_01:00:00.mem.zst"
    subprocess.run(["/usr/bin/zstd", "-q", "-o", str(packed), str(raw)], check=True)
    dump = _dump(tmp_path, b"")
    dump.path.unlink()
    data = bytearray(packed.read_bytes())
    data[len(data) // 2] ^= 0x01  # damaged, but the manifest was written for the damaged bytes
    packed.write_bytes(bytes(data))
    dump.path, dump.size = packed, len(data)
    dump.manifest.size, dump.manifest.sha256 = len(data), hashlib.sha256(data).hexdigest()
    check = check_dump(RamStore(tmp_path, Runner(), zstd_bin="/usr/bin/zstd"), dump, full=True)
    assert check.compressed and "does not decompress" in check.problem
