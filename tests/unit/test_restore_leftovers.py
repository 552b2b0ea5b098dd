"""A restore killed while its decompressed RAM image existed (kill -9, power loss) left that image — the size of the
guest's RAM — in state_dir/restore for good, counted against the room the next restore needs. The next restore
names it in its plan, counts its space as free and deletes it before decompressing; nothing else there is touched.
On the lab: tests/integration/test_restore_drill.py."""
from __future__ import annotations

import os
from datetime import datetime, timezone

from vmsnapd.actions.context import Context
from vmsnapd.actions.restore import DumpCheck, RestoreFacts, clear_restore_leftovers, decide, room_to_decompress
from vmsnapd.config import parse_config
from vmsnapd.runner import Runner

DS = "tank/VM/web"
S1 = "autosnap_2026-11-29_01:00:00_hourly"
LEFT = ".web_2026-11-28_01:00:00.mem.restore"


def _ctx(tmp_path) -> Context:
    text = (f'[daemon]\noverlay_dir = "{tmp_path}/overlay"\nstate_dir = "{tmp_path}/state"\n'
            f'ram_dir = "{tmp_path}/ram"\n[datasets."{DS}"]\ndomain = "web"\n')
    return Context(config=parse_config(text), config_path=tmp_path / "vmsnapd.toml", runner=Runner(), zfs=None,
                   now=lambda: datetime(2026, 11, 30, tzinfo=timezone.utc))


def _work(tmp_path):
    work = tmp_path / "state" / "restore"
    work.mkdir(parents=True)
    (work / LEFT).write_bytes(b"\0" * 4096)
    (work / "notes.txt").write_text("the admin's")  # not a restore image: never touched
    (work / ".x_2026-11-28_01:00:00.mem.restore.d").mkdir()  # not a file
    (tmp_path / "elsewhere").write_bytes(b"keep")
    os.symlink(tmp_path / "elsewhere", work / ".y_2026-11-28_01:00:00.mem.restore")  # a link: never followed
    return work


def test_leftovers_are_found_counted_as_room_and_deleted_alone(tmp_path):
    ctx, work = _ctx(tmp_path), _work(tmp_path)
    assert ctx.ram_store.restore_leftovers(work) == [work / LEFT]
    leftovers: list[str] = []
    room = room_to_decompress(ctx, leftovers)
    assert leftovers == [str(work / LEFT)]
    statvfs = os.statvfs(work)
    assert room is not None and room >= 4096 + statvfs.f_bavail * statvfs.f_frsize - 2**20
    done: list[str] = []
    clear_restore_leftovers(ctx, done)
    assert done == [f"deleted {work / LEFT}, a decompressed RAM image an interrupted restore left"]
    assert sorted(p.name for p in work.iterdir()) == sorted(
        ["notes.txt", ".x_2026-11-28_01:00:00.mem.restore.d", ".y_2026-11-28_01:00:00.mem.restore"])
    assert (tmp_path / "elsewhere").read_bytes() == b"keep"


def test_the_plan_names_the_leftover_it_deletes_before_resuming(tmp_path):
    facts = RestoreFacts(domain="web", datasets=[DS], vm_state="shutoff", snapshots={DS: [S1]},
                         existing={"tank/VM", DS}, free_bytes=2**30, leftovers=[f"/s/restore/{LEFT}"],
                         dump=DumpCheck(path="/ram/web/web_2026-11-29_01:00:00.mem.zst", compressed=True,
                                        raw_size=2**20, names=[S1]))
    plan = decide(facts, S1, clone=None, no_memory=False, force_stop=False, stamp="20261130T010203")
    assert plan.steps[-2:] == [f"delete /s/restore/{LEFT} (a decompressed RAM image an interrupted restore left)",
                               "resume web from RAM dump /ram/web/web_2026-11-29_01:00:00.mem.zst"]
