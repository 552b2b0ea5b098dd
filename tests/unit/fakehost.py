"""In-memory fakes of the host a cycle, `recover` and `restore` talk to: libvirt (FakeHypervisor), zfs (FakeZfs),
plus a journal whose writes can fail (FlakyJournal) and a RAM store whose `keep` can fail (FlakyRamStore).

They implement the adapters' verbs the orchestration uses, keep the host's state as plain data (which disk runs on
which file, what is paused, frozen, gone; which snapshots exist), record every call in `calls`, and take
injected faults per verb (`fail(verb, *effects)`): each call of the verb consumes one effect — an exception is
raised, a callable is run first (e.g. the domain vanishes), None lets the call through. They are for fast fault-path
tests only: every claim about real libvirt and ZFS is proven by the lab tests in tests/integration.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from vmsnapd.domxml import parse_disks
from vmsnapd.hvtypes import (PAUSED, RUNNING, SHUTOFF, AgentUnavailable, DomainNotFound, HypervisorError,
                             OverlayPathTaken, RamAlreadyCaptured)
from vmsnapd.journal import Journal, JournalError
from vmsnapd.ramstore import RamStore, RamStoreError
from vmsnapd.zfs import DatasetInfo, SnapshotExists, ZfsListing

NOW = datetime(2026, 11, 29, 1, 0, tzinfo=timezone.utc)

Effect = BaseException | Callable[[], object] | None


class Faults:
    """Per verb, the effects of its next calls (consumed in order; calls beyond them go through)."""

    def __init__(self) -> None:
        self.planned: dict[str, list[Effect]] = {}
        self.later: dict[str, list[Callable[[], object]]] = {}

    def fail(self, verb: str, *effects: Effect) -> None:
        self.planned.setdefault(verb, []).extend(effects)

    def then(self, verb: str, effect: Callable[[], object]) -> None:
        """Run `effect` right after the next successful call of `verb` (e.g. the domain vanishes)."""
        self.later.setdefault(verb, []).append(effect)

    def done(self, verb: str) -> None:
        effects = self.later.get(verb)
        if effects:
            effects.pop(0)()

    def hit(self, verb: str) -> None:
        effects = self.planned.get(verb)
        if not effects:
            return
        effect = effects.pop(0)
        if isinstance(effect, BaseException):
            raise effect
        if effect is not None:
            effect()


@dataclass
class FakeDomain:
    name: str
    live: dict[str, str]  # target -> the file the running (or defined) disk uses now
    persistent: dict[str, str]
    state: str = RUNNING
    agent: str = "answers"  # "answers", "silent" (channel, no answer) or "none" (no channel)
    fs_frozen: bool = False
    memory: int = 1 << 20
    readonly: tuple[str, ...] = ()  # targets of read-only disks (a cycle skips them)
    # QEMU's "postmigrate": its RAM was captured and it has stayed paused since; no other capture until it runs
    postmigrate: bool = False


def domain_xml(name: str, disks: dict[str, str], agent: bool, readonly: tuple[str, ...] = ()) -> str:
    body = "".join(f"<disk type='file' device='disk'><driver type='{'qcow2' if p.endswith('.qcow2') else 'raw'}'/>"
                   f"<source file='{p}'/><target dev='{t}'/>{'<readonly/>' if t in readonly else ''}</disk>"
                   for t, p in disks.items())
    channel = ("<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
               if agent else "")
    return f"<domain type='qemu'><name>{name}</name><devices>{body}{channel}</devices></domain>"


class PauseCount:
    def __init__(self) -> None:
        self.ms: int | None = None

    def paused_ms(self) -> int | None:
        return self.ms


class FakeHypervisor(Faults):
    """libvirt as the cycle, recover and restore see it."""

    def __init__(self) -> None:
        super().__init__()
        self.domains: dict[str, FakeDomain] = {}
        self.backing: dict[str, str] = {}  # overlay file -> its base (the qcow2 header)
        self.calls: list[tuple] = []
        self.dry_run = False  # as the real adapter: verbs that change something only say they would

    # -- building the host ------------------------------------------------------------------------------------

    def add(self, name: str, disks: dict[str, str], *, state: str = RUNNING, agent: str = "answers",
            readonly: tuple[str, ...] = ()) -> FakeDomain:
        dom = FakeDomain(name=name, live=dict(disks), persistent=dict(disks), state=state, agent=agent,
                         readonly=readonly)
        self.domains[name] = dom
        return dom

    def vanish(self, name: str) -> None:
        """The domain is destroyed and undefined behind vmsnapd's back."""
        self.domains.pop(name, None)

    def shut_off(self, name: str) -> None:
        dom = self.domains[name]
        dom.state = SHUTOFF
        dom.live = dict(dom.persistent)
        dom.fs_frozen = False

    def _get(self, name: str) -> FakeDomain:
        if name not in self.domains:
            raise DomainNotFound(f"domain {name}: Domain not found")
        return self.domains[name]

    def _active(self, name: str, what: str) -> FakeDomain:
        """The domain, which must run (or be paused) for `what`: libvirt's "domain is not running" otherwise."""
        dom = self._get(name)
        if dom.state not in (RUNNING, PAUSED):
            raise HypervisorError(f"{what} {name}: Requested operation is not valid: domain is not running")
        return dom

    def _call(self, verb: str, *args: object) -> bool:
        """Record and apply faults; False in dry run (the verb must change nothing)."""
        self.calls.append((verb, *args))
        self.hit(verb)
        return not self.dry_run

    def verbs(self, *names: str) -> list[tuple]:
        """The recorded calls of these verbs, in order."""
        return [c for c in self.calls if c[0] in names]

    # -- reading ----------------------------------------------------------------------------------------------

    def domain_names(self) -> list[str]:
        self._call("domain_names")
        return sorted(self.domains)

    def exists(self, name: str) -> bool:
        self.hit("exists")
        return name in self.domains

    def state(self, name: str) -> str:
        self.hit("state")
        return self._get(name).state

    def xml(self, name: str, inactive: bool = False) -> str:
        self.hit("xml")
        dom = self._get(name)
        return domain_xml(name, dom.persistent if inactive else dom.live, dom.agent != "none", dom.readonly)

    def disks(self, name: str):
        return parse_disks(self.xml(name))

    def memory_bytes(self, name: str) -> int:
        return self._get(name).memory

    def all_domain_disks(self) -> dict[str, list[tuple[str, str]]]:
        self._call("all_domain_disks")
        return {n: list(dict.fromkeys(list(d.live.items()) + list(d.persistent.items())))
                for n, d in self.domains.items()}

    def overlay_disks(self, name: str, overlay_dir: Path):
        base = str(overlay_dir.resolve()).rstrip("/") + "/"
        return [d for d in self.disks(name) if d.source.startswith(base)]

    def snapshot_records(self, name: str) -> list:
        self._get(name)
        return []

    def live_ram_caveat(self, name: str) -> str | None:
        self._get(name)
        return None

    def delete_snapshot_metadata(self, name: str, snapshots: list[str]) -> list[str]:
        self._call("delete_snapshot_metadata", name, tuple(snapshots))
        return list(snapshots)

    def backing_of(self, path: str) -> tuple[str, str]:
        if path not in self.backing:
            raise HypervisorError(f"{path} has no backing file")
        return self.backing[path], "raw"

    def backing_chain(self, path: str) -> list[str]:
        """The chain under `path` as `self.backing` names it (a missing file: qemu-img's error)."""
        self.hit("backing_chain")
        chain: list[str] = []
        while path in self.backing and len(chain) < 8:
            path = self.backing[path]
            chain.append(path)
        return chain

    # -- guest agent ------------------------------------------------------------------------------------------

    def has_agent_channel(self, name: str) -> bool:
        return self._get(name).agent != "none"

    def agent_answers(self, name: str, timeout_s: int = 2) -> bool:
        return self._get(name).agent == "answers" and self._get(name).state == RUNNING

    def fs_freeze(self, name: str) -> int:
        if not self._call("fs_freeze", name):
            return 0
        dom = self._active(name, "fsfreeze")
        if dom.agent != "answers":
            raise AgentUnavailable(f"fsfreeze {name}: Guest agent is not responding")
        dom.fs_frozen = True
        self.done("fs_freeze")
        return 1

    def fs_thaw(self, name: str) -> int:
        if not self._call("fs_thaw", name):
            return 0
        dom = self._get(name)
        if dom.agent != "answers" or dom.state != RUNNING:
            raise AgentUnavailable(f"fsthaw {name}: Guest agent is not responding")
        count = int(dom.fs_frozen)
        dom.fs_frozen = False
        return count

    # -- holding the guest still ------------------------------------------------------------------------------

    @contextmanager
    def watch_pauses(self, domain: str) -> Iterator[PauseCount]:
        watch = PauseCount()
        yield watch
        watch.ms = 5

    def create_overlay(self, overlay_path: str, backing: str, backing_format: str) -> None:
        """As qemu-img: a new file (never over an existing one) recording its backing file."""
        if not self._call("create_overlay", overlay_path, backing, backing_format):
            return
        try:
            with open(overlay_path, "xb") as f:  # O_EXCL, as the adapter's create_private_file
                f.write(b"overlay")
        except FileExistsError as exc:
            raise OverlayPathTaken(f"cannot create overlay {overlay_path}: it appeared meanwhile (not this cycle's "
                                   "overlay, left alone); no snapshot taken") from exc
        self.backing[overlay_path] = backing
        self.done("create_overlay")

    def snapshot_external(self, name: str, overlays: dict[str, str], memory_file: str | None, *, live: bool,
                          skip_disks: list[str], reuse: bool = False) -> None:
        if not self._call("snapshot_external", name, tuple(sorted(overlays.items())), memory_file, tuple(skip_disks)):
            return
        dom = self._active(name, "snapshot of")
        self._capture_allowed(dom, memory_file)
        for target, overlay in overlays.items():  # atomic: all or nothing, as with VIR_..._CREATE_ATOMIC
            if target not in dom.live:
                raise HypervisorError(f"snapshot of {name}: no disk {target}")
            if reuse and not Path(overlay).exists():  # libvirt's words with REUSE_EXT
                raise HypervisorError(f"snapshot of {name}: missing existing file for disk {target}: {overlay}")
        for target, overlay in overlays.items():
            if not reuse:
                Path(overlay).write_bytes(b"overlay")
            self.backing[overlay] = dom.live[target]
            dom.live[target] = dom.persistent[target] = overlay
        if memory_file:
            Path(memory_file).write_bytes(b"ram" * 100)
            dom.postmigrate = dom.state == PAUSED  # libvirt resumes a guest it paused for the capture
        self.done("snapshot_external")

    @staticmethod
    def _capture_allowed(dom: FakeDomain, memory_file: str | None) -> None:
        if memory_file and dom.postmigrate:
            raise RamAlreadyCaptured(f"snapshot of {dom.name}: internal error: unable to execute QEMU command "
                                     "'migrate': Can't migrate the vm that was paused due to previous migration")

    def snapshot_manual(self, name: str, targets: list[str], memory_file: str, *, live: bool,
                        skip_disks: list[str]) -> None:
        if not self._call("snapshot_manual", name, tuple(targets), memory_file, tuple(skip_disks)):
            return
        dom = self._active(name, "snapshot of")
        self._capture_allowed(dom, memory_file)
        Path(memory_file).write_bytes(b"ram" * 100)
        dom.state = PAUSED
        dom.postmigrate = True
        self.done("snapshot_manual")

    def suspend(self, name: str) -> None:
        if not self._call("suspend", name):
            return
        self._active(name, "pause").state = PAUSED
        self.done("suspend")

    def resume(self, name: str) -> None:
        if not self._call("resume", name):
            return
        dom = self._get(name)
        if dom.state != PAUSED:
            raise HypervisorError(f"resume {name}: Requested operation is not valid: domain is not paused")
        dom.state = RUNNING
        dom.postmigrate = False

    # -- committing back --------------------------------------------------------------------------------------

    def commit_active(self, name: str, target: str) -> None:
        if not self._call("commit_active", name, target):
            return
        dom = self._get(name)
        if dom.state not in (RUNNING, PAUSED):
            raise HypervisorError(f"blockcommit {name} {target}: domain is not running")
        overlay = dom.live[target]
        if overlay not in self.backing:
            raise HypervisorError(f"blockcommit {name} {target}: top has no backing file")
        dom.live[target] = self.backing[overlay]
        if dom.persistent.get(target) == overlay:
            dom.persistent[target] = self.backing[overlay]
        self.done("commit_active")

    def commit_overlay_file(self, overlay_path: str) -> str:
        self._call("commit_overlay_file", overlay_path)
        return self.backing_of(overlay_path)[0]

    def commit_offline(self, name: str, target: str, overlay_path: str) -> str:
        self._call("commit_offline", name, target, overlay_path)
        dom = self._get(name)
        if dom.state in (RUNNING, PAUSED):
            raise HypervisorError(f"{name} is running: its overlay must be committed live")
        base = self.backing_of(overlay_path)[0]
        dom.live[target] = dom.persistent[target] = base
        return base

    def repoint_definition(self, name: str, target: str, overlay_path: str) -> str | None:
        self._call("repoint_definition", name, target, overlay_path)
        dom = self._get(name)
        base = self.backing_of(overlay_path)[0]
        dom.persistent[target] = base
        return base

    # -- restore ----------------------------------------------------------------------------------------------

    def destroy(self, name: str) -> None:
        self._call("destroy", name)
        dom = self._get(name)
        dom.state = SHUTOFF
        dom.live = dict(dom.persistent)

    def start(self, name: str) -> None:
        self._call("start", name)
        self._get(name).state = RUNNING

    def restore_memory(self, memory_file: str, domain_xml: str | None = None, *, paused: bool = False) -> None:
        self._call("restore_memory", memory_file, domain_xml)

    def define(self, xml: str) -> str:
        self._call("define", xml)
        return xml.split("<name>", 1)[1].split("<", 1)[0]

    def undefine(self, name: str) -> None:
        self._call("undefine", name)
        self.domains.pop(name, None)


class FakeZfs(Faults):
    """`zfs snapshot` and the listing a cycle reads, in memory."""

    dialect = "openzfs"  # "zfs-fuse": a VM group's step takes one command per dataset (vmsnapd.groupcycle)

    def __init__(self, mounts: dict[str, Path]) -> None:
        super().__init__()
        self.mounts = mounts  # dataset -> its mountpoint
        self.snapshots: list[str] = []  # "ds@name", in the order taken
        self.properties: dict[tuple[str, str], str] = {}  # (snapshot, property) -> value
        self.calls: list[tuple] = []
        self.dry_run = False

    def listing(self) -> ZfsListing:
        from vmsnapd.models import Snapshot

        return ZfsListing(datasets={ds: DatasetInfo(ds, str(mp), NOW) for ds, mp in self.mounts.items()},
                          snapshots=[Snapshot(dataset=s.split("@")[0], name=s.split("@")[1], creation=NOW)
                                     for s in self.snapshots])

    def snapshot(self, datasets, snapname: str) -> bool:
        self.calls.append(("snapshot", tuple(datasets), snapname))
        self.hit("snapshot")
        if self.dry_run:
            return True
        names = [f"{ds}@{snapname}" for ds in datasets]
        if any(n in self.snapshots for n in names):
            raise SnapshotExists(f"{names[0]}: dataset already exists", names[0])
        self.snapshots += names
        self.done("snapshot")
        return True

    def list_tree(self, roots) -> ZfsListing:
        return self.listing()

    def property_source(self, target: str, prop: str) -> tuple[str, str]:
        if prop == "mountpoint":
            return str(self.mounts[target]), "default"
        self.hit("get_property")
        if (target, prop) in self.properties:
            return self.properties[(target, prop)], "local"
        dataset = target.split("@")[0]  # a snapshot inherits its dataset's user properties
        if (dataset, prop) in self.properties:
            return self.properties[(dataset, prop)], f"inherited from {dataset}"
        return "-", "-"

    def set_property(self, target: str, prop: str, value: str) -> None:
        self.calls.append(("set_property", target, prop))
        self.hit("set_property")
        assert target in self.snapshots or target in self.mounts, target
        self.properties[(target, prop)] = value

    def get_property(self, target: str, prop: str) -> str:
        self.hit("get_property")
        return self.properties.get((target, prop), "-")

    def destroy_snapshots(self, dataset: str, snapnames) -> dict:
        self.calls.append(("destroy_snapshots", dataset, tuple(snapnames)))
        for name in snapnames:
            self.snapshots.remove(f"{dataset}@{name}")
        return {}

    def snapshot_recursive(self, dataset: str, snapname: str) -> None:
        self.calls.append(("snapshot_recursive", dataset, snapname))
        self.hit("snapshot")
        if self.dry_run:
            return
        below = [d for d in self.mounts if d == dataset or d.startswith(dataset + "/")]
        self.snapshots += [f"{d}@{snapname}" for d in below]
        self.done("snapshot")


class FlakyJournal(Journal):
    """The real journal (files in state_dir/cycles), whose writes fail on cue: `fail_begin`, or entering one of the
    states in `fail_states` raises JournalError (as a full or read-only state_dir would)."""

    def __init__(self, state_dir: Path, *, fail_begin: bool = False, fail_states: tuple[str, ...] = (),
                 fail_finish: bool = False) -> None:
        super().__init__(state_dir)
        self.fail_begin = fail_begin
        self.fail_states = set(fail_states)
        self.fail_finish = fail_finish
        self.states: list[str] = []  # every state written, in order
        self.on_state: dict[str, Callable[[], object]] = {}  # state -> run once, right after it is written

    def begin(self, record):
        if self.fail_begin:
            raise JournalError("cannot write journal record: No space left on device")
        self.states.append(str(record.state))
        return super().begin(record)

    def update(self, record, **changes):
        state = changes.get("state", record.state)
        if str(state) in self.fail_states:
            raise JournalError(f"cannot write journal record ({state}): No space left on device")
        updated = super().update(record, **changes)
        if not self.states or self.states[-1] != str(updated.state):
            self.states.append(str(updated.state))
            effect = self.on_state.pop(str(updated.state), None)
            if effect is not None:
                effect()
        return updated

    def finish(self, record):
        if self.fail_finish:
            raise OSError("Input/output error")
        super().finish(record)


class FlakyRamStore(RamStore):
    """The real RAM store under ram_dir, whose `keep` fails `failures` times."""

    def __init__(self, ram_dir: Path, runner, failures: int = 0) -> None:
        super().__init__(ram_dir, runner=runner)
        self.failures = failures

    def keep(self, fresh_file, info, compression):
        if self.failures:
            self.failures -= 1
            raise RamStoreError(f"cannot store RAM dump of {info.domain}: No space left on device")
        return super().keep(fresh_file, info, compression)


class Killed(BaseException):
    """vmsnapd killed where a fault raises it: no except clause of the code under test catches it."""


@dataclass
class Host:
    """One fake host: a domain `web` with one disk on dataset tank/web (or a plain dataset), the config, and the
    pieces a Cycle and `recover` need."""

    root: Path
    hv: FakeHypervisor
    zfs: FakeZfs
    journal: FlakyJournal
    ram_store: FlakyRamStore
    overlay_dir: Path
    config_text: str

    def config(self):
        from vmsnapd.config import parse_config

        return parse_config(self.config_text)

    def survey(self):
        from vmsnapd.actions.context import Survey
        from vmsnapd.config import resolve

        listing = self.zfs.listing()
        return Survey(listing=listing, policies=resolve(self.config(), sorted(listing.datasets)))

    def cycle(self, periods: tuple[str, ...] = ("hourly",), *, dry_run: bool = False, staging=None,
              compression: str = "none"):
        """Plan the targets as a pass does and run the cycle of the first one; returns its TargetOutcome.
        `staging`: the cycle's StagingArea (none: the RAM file goes to overlay_dir)."""
        from vmsnapd.cycle import Cycle, CycleEnv
        from vmsnapd.targets import plan_targets, read_backing

        self.hv.dry_run = self.zfs.dry_run = dry_run
        survey = self.survey()
        target = plan_targets(survey.policies, survey.listing, self.hv)[0]
        read_backing([target], self.hv, survey.listing)
        env = CycleEnv(zfs=self.zfs, hypervisor=self.hv, journal=self.journal, listing=survey.listing,
                       overlay_dir=self.overlay_dir, ram_store=self.ram_store, ram_compression=compression,
                       hook_timeout=10.0, dry_run=dry_run, staging=staging)
        return Cycle(env, target, list(periods), STAMP).run()

    def cycle_killed_at_zfs_snapshot(self, *, staging=None) -> None:
        """The cycle as vmsnapd killed (SIGKILL, power loss) while its `zfs snapshot` ran: the journal keeps the
        record of the step reached, nothing is cleaned up — what `recover` finds."""
        self.zfs.fail("snapshot", Killed())
        try:
            self.cycle(staging=staging)
        except Killed:
            return
        raise AssertionError("the cycle was not killed at its zfs snapshot")

    def context(self, *, dry_run: bool = False):
        from vmsnapd.actions.context import Context
        from vmsnapd.runner import Runner

        return Context(config=self.config(), config_path=self.root / "vmsnapd.toml", runner=Runner(), zfs=self.zfs,
                       dry_run=dry_run, now=lambda: STAMP, _hypervisor=self.hv)

    def recover(self):
        from vmsnapd.actions.folders import FolderCheck
        from vmsnapd.actions.recover import recover

        return recover(self.context(), self.survey(), folders=FolderCheck())

    def overlay_name(self, target: str = "vda") -> str:
        from vmsnapd.names import STAMP_FORMAT
        from vmsnapd.overlaynames import overlay_file_name

        return overlay_file_name("web", target, STAMP.strftime(STAMP_FORMAT))

    def memory_name(self) -> str:
        from vmsnapd.names import STAMP_FORMAT
        from vmsnapd.overlaynames import memory_file_name

        return memory_file_name("web", STAMP.strftime(STAMP_FORMAT))

    def records(self):
        return Journal(self.root / "state").pending()

    def overlay_files(self) -> list[str]:
        return sorted(p.name for p in self.overlay_dir.iterdir()) if self.overlay_dir.exists() else []

    def dumps(self) -> list[str]:
        folder = self.root / "ram" / "web"
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


STAMP = datetime(2026, 11, 29, 1, 0, tzinfo=timezone.utc)


def _toml(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def make_host(root: Path, *, state: str = RUNNING, agent: str = "answers", disks: tuple[str, ...] = ("vda",),
              domain: str | None = "web", policy: dict | None = None, ram_failures: int = 0,
              journal_faults: dict | None = None) -> Host:
    """Dataset tank/web (mounted under `root`) holding the disks of domain `web` (None: a plain dataset)."""
    from vmsnapd.runner import Runner

    mount = root / "tank" / "web"
    mount.mkdir(parents=True)
    overlay_dir = root / "overlay"
    hv = FakeHypervisor()
    if domain:
        files = {}
        for target in disks:
            files[target] = str(mount / f"{domain}-{target}.img")
            Path(files[target]).write_bytes(b"base")
        hv.add(domain, files, state=state, agent=agent)
    settings = {"hourly": 1, "daily": 0, "monthly": 0, "domain": domain or "none", **(policy or {})}
    text = (f'[daemon]\noverlay_dir = "{overlay_dir}"\nstate_dir = "{root}/state"\nram_dir = "{root}/ram"\n'
            f'ram_staging_dir = "{root}/staging"\n[datasets."tank/web"]\n' + "".join(f"{k} = {_toml(v)}\n" for k, v in settings.items()))
    return Host(root=root, hv=hv, zfs=FakeZfs({"tank/web": mount}),
                journal=FlakyJournal(root / "state", **(journal_faults or {})),
                ram_store=FlakyRamStore(root / "ram", Runner(), failures=ram_failures),
                overlay_dir=overlay_dir, config_text=text)


@dataclass
class FakeDataset:
    snapshots: list[str]  # short names, oldest first
    origin: str | None = None  # "ds@snap" for a clone
    mountpoint: str | None = None  # set locally; None: inherited (follows the name)
    mounted: bool = True


class TreeZfs(Faults):
    """The zfs verbs a restore, its undo and its drop use, on a model of datasets with clones and promotion (what
    real ZFS does to snapshots and origins on `clone`, `promote`, `rename`, `destroy -r`)."""

    dialect = "openzfs"

    def __init__(self, root: Path, datasets: dict[str, list[str]]) -> None:
        super().__init__()
        self.root = root  # where inherited mountpoints live: root/<dataset name>
        self.sets: dict[str, FakeDataset] = {name: FakeDataset(list(snaps)) for name, snaps in datasets.items()}
        self.properties: dict[tuple[str, str], str] = {}  # (snapshot, user property) -> value
        self.calls: list[tuple] = []
        self.dry_run = False

    def _call(self, verb: str, *args: object) -> None:
        self.calls.append((verb, *args))
        self.hit(verb)

    def state(self) -> list[tuple]:
        """Everything a restore may change, comparable before and after."""
        return sorted((n, d.origin, tuple(d.snapshots), d.mountpoint, d.mounted) for n, d in self.sets.items())

    def _get(self, name: str) -> FakeDataset:
        from vmsnapd.zfs import DatasetNotFound

        if name not in self.sets:
            raise DatasetNotFound(f"cannot open '{name}': dataset does not exist", name)
        return self.sets[name]

    def _tree(self, name: str) -> list[str]:
        return [n for n in self.sets if n == name or n.startswith(name + "/")]

    def mountpoint_of(self, name: str) -> str:
        return self.sets[name].mountpoint or str(self.root / name)

    # -- reading ----------------------------------------------------------------------------------------------

    def list_tree(self, roots) -> ZfsListing:
        from vmsnapd.models import Snapshot

        roots = list(roots)
        names = sorted({n for r in roots for n in self._tree(r)})
        return ZfsListing(
            datasets={n: DatasetInfo(n, self.mountpoint_of(n) if self.sets[n].mounted else None, NOW)
                      for n in names},
            snapshots=[Snapshot(dataset=n, name=s, creation=NOW) for n in names for s in self.sets[n].snapshots],
            missing_roots=[r for r in roots if r not in self.sets])

    def get_property(self, target: str, prop: str) -> str:
        self._call("get_property", target, prop)
        if prop == "vmsnapd:backing":
            return self.properties.get((target, prop), "-")
        assert prop == "origin", prop
        return self._get(target).origin or "-"

    def property_source(self, dataset: str, prop: str) -> tuple[str, str]:
        if prop == "vmsnapd:backing":
            self._call("get_property", dataset, prop)
            value = self.properties.get((dataset, prop))
            return (value, "local") if value is not None else ("-", "-")
        assert prop == "mountpoint", prop
        ds = self._get(dataset)
        return (ds.mountpoint, "local") if ds.mountpoint else (self.mountpoint_of(dataset), "inherited")

    # -- changing ---------------------------------------------------------------------------------------------

    def unmount(self, dataset: str) -> None:
        self._call("unmount", dataset)
        self._get(dataset).mounted = False

    def mount(self, dataset: str) -> None:
        self._call("mount", dataset)
        self._get(dataset).mounted = True

    def rename(self, dataset: str, new_name: str) -> None:
        from vmsnapd.zfs import ZfsError

        self._call("rename", dataset, new_name)
        self._get(dataset)
        if new_name in self.sets:
            raise ZfsError(f"cannot rename to '{new_name}': dataset already exists", dataset)
        moved = {n: new_name + n[len(dataset):] for n in self._tree(dataset)}
        self.sets = {moved.get(n, n): d for n, d in self.sets.items()}
        for d in self.sets.values():
            if d.origin and d.origin.split("@")[0] in moved:
                source, snap = d.origin.split("@")
                d.origin = f"{moved[source]}@{snap}"

    def set_property(self, dataset: str, prop: str, value: str) -> None:
        self._call("set_property", dataset, prop, value)
        assert prop == "mountpoint", prop
        self._get(dataset).mountpoint = value

    def clone(self, dataset: str, snapname: str, new_dataset: str, properties: dict | None = None) -> None:
        from vmsnapd.zfs import ZfsError

        self._call("clone", dataset, snapname, new_dataset)
        if snapname not in self._get(dataset).snapshots or new_dataset in self.sets:
            raise ZfsError(f"cannot clone {dataset}@{snapname} as {new_dataset}", new_dataset)
        self.sets[new_dataset] = FakeDataset([], origin=f"{dataset}@{snapname}",
                                             mountpoint=(properties or {}).get("mountpoint"))

    def promote(self, dataset: str) -> None:
        from vmsnapd.zfs import ZfsError

        self._call("promote", dataset)
        clone = self._get(dataset)
        if not clone.origin:
            raise ZfsError(f"cannot promote '{dataset}': not a cloned filesystem", dataset)
        source_name, snap = clone.origin.split("@")
        source = self.sets[source_name]
        cut = source.snapshots.index(snap) + 1
        taken, source.snapshots = source.snapshots[:cut], source.snapshots[cut:]
        clone.snapshots = taken + clone.snapshots
        clone.origin, source.origin = source.origin, f"{dataset}@{snap}"
        for name, d in self.sets.items():
            if name != source_name and d.origin and d.origin.split("@")[0] == source_name \
                    and d.origin.split("@")[1] in taken:
                d.origin = f"{dataset}@{d.origin.split('@')[1]}"

    def destroy_dataset(self, dataset: str, *, recursive: bool = False, force: bool = False) -> None:
        from vmsnapd.zfs import HasDependents

        self._call("destroy_dataset", dataset, recursive)
        self._get(dataset)
        doomed = set(self._tree(dataset))
        dependents = [n for n, d in self.sets.items()
                      if n not in doomed and d.origin and d.origin.split("@")[0] in doomed]
        if dependents:
            raise HasDependents(f"cannot destroy '{dataset}': filesystem has dependent clones", dataset)
        for name in doomed:
            del self.sets[name]
