"""Datasets of several pools under one snapshot name (drill, session 19): a VM whose disks sit on two pools (a fast
and a big one), or a VM group whose members do. OpenZFS takes several names in one `zfs snapshot`, atomically, but
only within one pool: its ioctl refuses names of several pools (zfs_ioc_snapshot: "The snap must be in the specified
pool", EXDEV; the zfs command then says "multiple snapshots of same fs not allowed"). vmsnapd sent them all in one
command, so every cycle of such a VM failed on OpenZFS hosts. Now: one command per pool, all or nothing. The lab
(zfs-fuse, one name per command) cannot show it: a fake runner answers as OpenZFS does."""

from __future__ import annotations

from vmsnapd.runner import CommandFailed, CommandResult, Runner
from vmsnapd.zfs import OPENZFS, Zfs

EXDEV = "cannot create snapshots : multiple snapshots of same fs not allowed"


class OpenZfsRunner(Runner):
    """OpenZFS's `zfs snapshot`: several names in one command only within one pool; `fail`: a target whose command
    fails (stderr)."""

    def __init__(self, fail: dict[str, str] | None = None):
        super().__init__()
        self.calls: list[tuple[str, ...]] = []
        self.fail = fail or {}

    def run(self, argv, *, timeout=None, check=True, env=None, input_text=None, cwd=None) -> CommandResult:
        argv = tuple(argv)
        if argv[1:3] == ("list", "-H"):
            return CommandResult(argv, 0, "tank\n", "", 1)
        self.calls.append(argv)
        if argv[1] == "snapshot":
            targets = argv[2:]
            if len({t.split("/", 1)[0].split("@", 1)[0] for t in targets}) > 1:
                raise CommandFailed(argv, "zfs snapshot failed", 1, EXDEV)
            for target in targets:
                if target in self.fail:
                    raise CommandFailed(argv, "zfs snapshot failed", 1, self.fail[target])
        return CommandResult(argv, 0, "", "", 1)


def test_datasets_of_one_pool_are_taken_in_one_atomic_command():
    runner = OpenZfsRunner()
    assert Zfs(runner).snapshot(["tank/a", "tank/b"], "s") is True
    assert runner.calls == [("zfs", "snapshot", "tank/a@s", "tank/b@s")]


def test_datasets_of_two_pools_are_taken_one_command_per_pool():
    runner = OpenZfsRunner()
    zfs = Zfs(runner)
    assert zfs.dialect == OPENZFS

    atomic = zfs.snapshot(["tank/a", "fast/b", "tank/c"], "s")

    assert atomic is False  # no command spans two pools: the caller says so (or holds the VM still meanwhile)
    assert runner.calls == [("zfs", "snapshot", "tank/a@s", "tank/c@s"), ("zfs", "snapshot", "fast/b@s")]


def test_a_pool_failing_undoes_the_other_pools_snapshots():
    from vmsnapd.zfs import ZfsError

    runner = OpenZfsRunner(fail={"fast/b@s": "cannot create snapshot 'fast/b@s': out of space"})
    zfs = Zfs(runner)

    try:
        zfs.snapshot(["tank/a", "fast/b", "tank/c"], "s")
    except ZfsError as exc:
        assert "out of space" in str(exc)
    else:
        raise AssertionError("a failing pool must fail the snapshot")

    assert runner.calls[:2] == [("zfs", "snapshot", "tank/a@s", "tank/c@s"), ("zfs", "snapshot", "fast/b@s")]
    undone = sorted(c[-1] for c in runner.calls[2:] if c[1] == "destroy")
    assert undone == ["tank/a@s", "tank/c@s"]  # all or nothing, as one command would be
