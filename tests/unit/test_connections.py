"""VM cycles side by side each get a hypervisor connection of their own (vmsnapd.connections): libvirtd serves at
most 5 calls of one connection at once, so eight cycles on one connection waited in line (docs/benchmarks.md,
"8 running VMs"). The pool itself, and a pass of four VMs on the fake host whose connections are recorded. That
snapshots and commits still work with several connections is proven on the lab (tests/integration/
test_cycle_faults.py::test_max_parallel, test_groups.py)."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fakehost import FakeHypervisor, FakeZfs, FlakyJournal, FlakyRamStore, Host, _toml
from test_groups_fakes import make_group_host
from vmsnapd.actions.take import take_due
from vmsnapd.connections import Connections
from vmsnapd.runner import Runner

DOMAINS = ["vm1", "vm2", "vm3", "vm4"]


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    monkeypatch.setattr("os.fsync", lambda fd: None)


class Connection:
    """One connection to the shared fake libvirt: records which domain's verbs came through it in a cycle."""

    def __init__(self, hv: FakeHypervisor, number: int, log: list):
        self.hv, self.number, self.log = hv, number, log
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def __getattr__(self, verb):
        method = getattr(self.hv, verb)
        if not callable(method):
            return method

        def call(*args, **kwargs):
            assert not self.closed, f"{verb} on a closed connection"
            if threading.current_thread() is not threading.main_thread():  # a cycle's call, not planning's
                self.log.append((self.number, verb, args[0] if args else None))
            return method(*args, **kwargs)
        return call


class Opener:
    def __init__(self, hv: FakeHypervisor):
        self.hv, self.log, self.made = hv, [], []

    def __call__(self) -> Connection:
        connection = Connection(self.hv, len(self.made) + 1, self.log)
        self.made.append(connection)
        return connection


class TogetherHypervisor(FakeHypervisor):
    """The fake libvirt whose RAM capture returns only once `together` cycles are in it at once."""

    def __init__(self, together: int):
        super().__init__()
        self.barrier = threading.Barrier(together, timeout=10)

    def snapshot_external(self, name, overlays, memory_file, *, live, skip_disks, reuse=False):
        self.barrier.wait()
        super().snapshot_external(name, overlays, memory_file, live=live, skip_disks=skip_disks, reuse=reuse)


def make_vms_host(root: Path, hv: FakeHypervisor, max_parallel: int) -> Host:
    mounts = {}
    text = (f'[daemon]\noverlay_dir = "{root}/overlay"\nstate_dir = "{root}/state"\nram_dir = "{root}/ram"\n'
            f'max_parallel = {max_parallel}\n')
    for name in DOMAINS:
        mount = mounts[f"tank/{name}"] = root / "tank" / name
        mount.mkdir(parents=True)
        (mount / "disk.img").write_bytes(b"base")
        hv.add(name, {"vda": str(mount / "disk.img")})
        settings = {"hourly": 1, "daily": 0, "monthly": 0, "quiesce": "off"}
        text += f'[datasets."tank/{name}"]\n' + "".join(f"{k} = {_toml(v)}\n" for k, v in settings.items())
    return Host(root=root, hv=hv, zfs=FakeZfs(mounts), journal=FlakyJournal(root / "state"),
                ram_store=FlakyRamStore(root / "ram", Runner()), overlay_dir=root / "overlay", config_text=text)


def run_pass(host: Host, opener: Opener):
    ctx = host.context()
    ctx._hypervisor = first = Connection(host.hv, 0, opener.log)
    ctx._open_hypervisor = opener
    report = take_due(ctx, host.survey())
    assert [o.error for o in report.outcomes] == [None] * len(report.outcomes)
    assert not first.closed  # the pass's own connection is its owner's to close
    assert all(c.closed for c in opener.made)  # every further one is closed with the cycles
    return {domain: {n for n, verb, d in opener.log if d == domain and verb != "domain_names"}
            for domain in {d for _, _, d in opener.log if d in host.hv.domains}}


def test_cycles_side_by_side_each_use_a_connection_of_their_own(tmp_path):
    hv = TogetherHypervisor(together=4)  # on one connection (as before) this works too: the fake has no queue
    host, opener = make_vms_host(tmp_path, hv, max_parallel=4), Opener(hv)

    used = run_pass(host, opener)

    assert sorted(used) == DOMAINS
    assert all(len(numbers) == 1 for numbers in used.values()), used  # a cycle keeps its connection
    assert sorted(n for numbers in used.values() for n in numbers) == [0, 1, 2, 3]  # four at once: four apart
    assert len(opener.made) == 3  # the pass's own connection serves one cycle


def test_one_cycle_at_a_time_opens_no_further_connection(tmp_path):
    hv = FakeHypervisor()
    host, opener = make_vms_host(tmp_path, hv, max_parallel=1), Opener(hv)

    used = run_pass(host, opener)

    assert used == {d: {0} for d in DOMAINS}
    assert opener.made == []


def test_the_members_of_a_group_each_use_a_connection_of_their_own(tmp_path):
    host = make_group_host(tmp_path)
    opener = Opener(host.hv)

    used = run_pass(host, opener)

    assert sorted(used) == ["app", "db"]
    assert used["app"].isdisjoint(used["db"]), used


def test_a_lease_comes_back_for_the_next_cycle_and_close_spares_the_first():
    first, opener = Connection(FakeHypervisor(), 0, []), Opener(FakeHypervisor())
    pool = Connections(first, opener)
    with pool.lease() as a, pool.lease() as b, pool.lease() as c:
        assert len({id(a), id(b), id(c)}) == 3 and a is first
    with pool.lease() as again:
        assert again in (first, *opener.made)
    assert pool.opened == 2
    pool.close()
    assert [c.closed for c in opener.made] == [True, True] and not first.closed
    assert pool.opened == 0


def test_a_connection_that_cannot_be_opened_shares_the_first(caplog):
    first, opener = Connection(FakeHypervisor(), 0, []), Opener(FakeHypervisor())
    failures = [OSError("Too many open files")]

    def open_one():
        if failures:
            raise failures.pop()
        return opener()

    pool = Connections(first, open_one)
    with pool.lease() as a, pool.lease() as b:
        assert a is first and b is first  # shared, as with one connection: the cycle still runs
    assert "cannot open another connection" in caplog.text
    with pool.lease() as x, pool.lease() as y:
        assert x is first and y is opener.made[0]  # the first was given back once, not twice
    pool.close()
    assert opener.made[0].closed and not first.closed
