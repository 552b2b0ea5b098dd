"""The libvirt-free parts of the hypervisor adapter, in milliseconds: domain XML (vmsnapd.domxml), qemu-img
(vmsnapd.qemuimg, with a scripted runner), pause bookkeeping (vmsnapd.pausewatch), and that the adapters
have every verb their Protocol (vmsnapd.ports) names. The lab proves the same verbs against libvirt:
tests/integration/test_cycle*.py, test_restore.py, test_recover_ownership.py."""

from __future__ import annotations

import ast
import inspect
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsnapd import domxml, pausewatch
from vmsnapd.hvtypes import BlockJobFailed, DomainState, HypervisorError, OverlayPathTaken
from vmsnapd.pausewatch import PauseEvent, PauseWatch, PauseWatchers
from vmsnapd.ports import HypervisorPort, RamStorePort, ZfsPort
from vmsnapd.qemuimg import QemuImg
from vmsnapd.ramstore import RamStore
from vmsnapd.runner import CommandFailed, CommandResult, CommandTimeout, Runner
from vmsnapd.zfs import Zfs

DOMAIN = """<domain type='qemu'>
  <name>web</name>
  <os><type>hvm</type><nvram>/var/lib/libvirt/qemu/nvram/web_VARS.fd </nvram></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/ovl/web_vda.qcow2'/>
      <backingStore type='file'><format type='raw'/><source file='/tank/web/vda.img'/></backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/zvol/tank/web-data'/>
      <target dev='vdb' bus='virtio'/>
      <shareable/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>"""


# -- domain XML -------------------------------------------------------------------------------------------------

def test_parse_disks_reads_every_disk_and_which_a_cycle_captures():
    vda, vdb, sda = domxml.parse_disks(DOMAIN)
    assert vda == domxml.Disk("vda", "/ovl/web_vda.qcow2", "file", "qcow2", False, False, "disk")
    assert vda.snapshottable
    assert (vdb.source, vdb.kind, vdb.shareable, vdb.snapshottable) == ("/dev/zvol/tank/web-data", "block", True, False)
    assert (sda.source, sda.readonly, sda.device, sda.snapshottable) == ("", True, "cdrom", False)


def test_nvram_agent_channel_and_files():
    assert domxml.nvram_path(DOMAIN) == "/var/lib/libvirt/qemu/nvram/web_VARS.fd"
    assert domxml.nvram_path("<domain><os/></domain>") is None
    assert domxml.has_agent_channel(DOMAIN)
    assert not domxml.has_agent_channel("<domain><devices><channel><target name='other'/></channel></devices></domain>")
    assert domxml.disk_files(DOMAIN) == [("vda", "/ovl/web_vda.qcow2"), ("vda", "/tank/web/vda.img"),
                                         ("vdb", "/dev/zvol/tank/web-data")]
    assert domxml.storage_pool_path("<pool><target><path> /var/lib/libvirt/images </path></target></pool>") \
        == "/var/lib/libvirt/images"
    assert domxml.storage_pool_path("<pool type='rbd'><source/></pool>") == ""


def test_live_ram_caveat_names_tcg_guests_on_qemu_before_9():
    """QEMU < 9.0 loses dirty-page tracking of TCG guests in live migration (docs/benchmarks.md, goal 6): a TCG
    domain on such a QEMU gets the caveat (with its version), a KVM domain or QEMU 9.0 and later none."""
    caveat = domxml.live_ram_caveat(DOMAIN, 7_002_022)
    assert caveat and "QEMU 7.2.22" in caveat and "live = false" in caveat
    assert domxml.live_ram_caveat(DOMAIN, 8_002_010)
    assert domxml.live_ram_caveat(DOMAIN, 9_000_000) is None
    assert domxml.live_ram_caveat(DOMAIN, 10_001_000) is None
    assert domxml.live_ram_caveat(DOMAIN.replace("type='qemu'", "type='kvm'", 1), 7_002_022) is None
    assert domxml.live_ram_caveat(DOMAIN, 0) is None  # version unknown: no claim


def test_external_snapshot_xml():
    xml = domxml.external_snapshot_xml("vmsnapd-1", {"vda": "/ovl/a'b.qcow2"}, "/ovl/web.mem", ["vdb"])
    root = ET.fromstring(xml)
    assert root.findtext("name") == "vmsnapd-1"
    assert root.find("memory").attrib == {"snapshot": "external", "file": "/ovl/web.mem"}
    vda, vdb = root.findall("disks/disk")
    assert vda.attrib == {"name": "vda", "snapshot": "external", "type": "file"}
    assert vda.find("source").get("file") == "/ovl/a'b.qcow2" and vda.find("driver").get("type") == "qcow2"
    assert vdb.attrib == {"name": "vdb", "snapshot": "no"}
    disk_only = ET.fromstring(domxml.external_snapshot_xml("s", {"vda": "/o"}, None, []))
    assert disk_only.find("memory").attrib == {"snapshot": "no"}


def test_manual_snapshot_xml():
    root = ET.fromstring(domxml.manual_snapshot_xml("s", ["vda", "vdb"], "/ovl/m.mem", ["sda"]))
    assert root.find("memory").attrib == {"snapshot": "external", "file": "/ovl/m.mem"}
    assert [(d.get("name"), d.get("snapshot")) for d in root.findall("disks/disk")] == [
        ("vda", "manual"), ("vdb", "manual"), ("sda", "no")]


@settings(max_examples=50, deadline=None)
@given(paths=st.dictionaries(st.sampled_from(["vda", "vdb", "sdc"]),
                             st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1), max_size=3),
       memory=st.none() | st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1))
def test_snapshot_xml_carries_any_path_unchanged(paths, memory):
    """Quotes, angle brackets and ampersands in a path are escaped, never XML of their own."""
    root = ET.fromstring(domxml.external_snapshot_xml("s", paths, memory, []))
    assert {d.get("name"): d.find("source").get("file") for d in root.findall("disks/disk")} == paths
    assert root.find("memory").get("file") == memory


def test_snapshot_record_reads_only_what_the_snapshot_made():
    snap = """<domainsnapshot><name>vmsnapd-1</name>
      <memory snapshot='external' file='/ovl/web.mem'/>
      <disks><disk name='vda' snapshot='external'><source file='/ovl/web_vda.qcow2'/></disk>
             <disk name='vdb' snapshot='no'/></disks>
      <domain><devices><disk><source file='/tank/web/vda.img'/><target dev='vda'/></disk></devices></domain>
    </domainsnapshot>"""
    record = domxml.snapshot_record("vmsnapd-1", snap)
    assert (record.name, record.disks, record.memory) == ("vmsnapd-1", (("vda", "/ovl/web_vda.qcow2"),),
                                                          "/ovl/web.mem")
    bare = domxml.snapshot_record("x", "<domainsnapshot><memory snapshot='no'/></domainsnapshot>")
    assert (bare.disks, bare.memory) == ((), None)


def test_repoint_disk_puts_the_definition_back_on_its_base():
    assert domxml.disk_uses_file(DOMAIN, "vda", "/ovl/web_vda.qcow2")
    assert not domxml.disk_uses_file(DOMAIN, "vdb", "/ovl/web_vda.qcow2")
    new = domxml.repoint_disk(DOMAIN, "vda", "/ovl/web_vda.qcow2", "/tank/web/vda.img", "raw")
    vda = domxml.parse_disks(new)[0]
    assert (vda.source, vda.driver_type) == ("/tank/web/vda.img", "raw")
    assert ET.fromstring(new).find("./devices/disk/backingStore") is None
    assert domxml.parse_disks(new)[1:] == domxml.parse_disks(DOMAIN)[1:]  # the other disks untouched
    assert domxml.repoint_disk(DOMAIN, "vda", "/ovl/other.qcow2", "/b", "raw") is None
    assert domxml.repoint_disk(DOMAIN, "vdb", "/ovl/web_vda.qcow2", "/b", "raw") is None


def test_repoint_disk_keeps_the_qemu_namespace_prefix():
    xml = ("<domain xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><devices><disk><driver type='qcow2'/>"
           "<source file='/o.qcow2'/><target dev='vda'/></disk></devices>"
           "<qemu:commandline><qemu:arg value='-s'/></qemu:commandline></domain>")
    new = domxml.repoint_disk(xml, "vda", "/o.qcow2", "/b.img", "raw")
    assert "<qemu:commandline>" in new and "ns0:" not in new


# -- qemu-img ---------------------------------------------------------------------------------------------------

class Scripted(Runner):
    def __init__(self, *answers):
        super().__init__()
        self.answers = list(answers)
        self.calls: list[list[str]] = []

    def run(self, argv, *, timeout=None, check=True, env=None, input_text=None, cwd=None):
        self.calls.append(list(argv))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return CommandResult(tuple(argv), 0, answer, "", 0.01)


INFO = '{"backing-filename": "/tank/web/vda.img", "backing-filename-format": "raw"}'


def test_qemu_img_commit_reads_the_backing_file_then_commits():
    runner = Scripted(INFO, "")
    assert QemuImg(runner, binary="/usr/bin/qemu-img").commit("/ovl/o.qcow2") == "/tank/web/vda.img"
    assert runner.calls == [["/usr/bin/qemu-img", "info", "-U", "--output=json", "/ovl/o.qcow2"],
                            ["/usr/bin/qemu-img", "commit", "-q", "-d", "-f", "qcow2", "/ovl/o.qcow2"]]


def test_qemu_img_dry_run_only_reads(caplog):
    runner = Scripted(INFO)
    caplog.set_level("INFO")
    assert QemuImg(runner, dry_run=True).commit("/ovl/o.qcow2") == "/tank/web/vda.img"
    assert [c[1] for c in runner.calls] == ["info"]
    assert "dry-run: would qemu-img commit /ovl/o.qcow2 into /tank/web/vda.img" in caplog.text


def test_qemu_img_failures_are_typed():
    fail = CommandFailed(["qemu-img"], "failed", 1, "Could not open")
    with pytest.raises(HypervisorError, match="cannot read overlay /ovl/o.qcow2"):
        QemuImg(Scripted(fail)).backing_of("/ovl/o.qcow2")
    with pytest.raises(BlockJobFailed, match="qemu-img commit /ovl/o.qcow2"):
        QemuImg(Scripted(INFO, CommandTimeout(["qemu-img"], "timed out"))).commit("/ovl/o.qcow2")
    with pytest.raises(HypervisorError, match="no backing file"):
        QemuImg(Scripted('{"format": "qcow2"}')).commit("/ovl/o.qcow2")


# -- pauses -----------------------------------------------------------------------------------------------------

def _clock(monkeypatch, *stamps: float) -> None:
    clock = iter(stamps)
    monkeypatch.setattr(pausewatch, "time", SimpleNamespace(monotonic=lambda: next(clock), sleep=time.sleep))


def test_paused_ms_adds_up_the_pauses(monkeypatch):
    _clock(monkeypatch, 10.0, 10.25, 11.0, 11.5, 20.0)
    watch = PauseWatch("web")
    for kind in (PauseEvent.SUSPENDED, PauseEvent.RESUMED, PauseEvent.SUSPENDED, PauseEvent.RESUMED):
        watch.record(kind)
    assert watch.paused_ms() == 750
    assert PauseWatch("idle").paused_ms() is None  # no event: unknown, not 0


def test_paused_ms_counts_a_pause_still_going(monkeypatch):
    _clock(monkeypatch, 5.0, 5.5)
    watch = PauseWatch("web")
    watch.record(PauseEvent.SUSPENDED)
    assert watch.paused_ms() == 500


def test_watchers_deliver_to_open_watches_of_that_domain_only():
    watchers = PauseWatchers(settle_s=0)
    with watchers.watch("web") as web, watchers.watch("web") as web2, watchers.watch("db") as db:
        watchers.record("web", PauseEvent.SUSPENDED)
    watchers.record("web", PauseEvent.RESUMED)  # after the watches closed: nobody listens
    assert [k for _, k in web.events] == [k for _, k in web2.events] == ["suspended"]
    assert db.events == []


def test_watchers_take_events_from_another_thread():
    watchers = PauseWatchers(settle_s=0)
    with watchers.watch("web") as web:
        feeders = [threading.Thread(target=lambda: [watchers.record("web", PauseEvent.SUSPENDED) for _ in range(200)])
                   for _ in range(4)]
        for feeder in feeders:
            feeder.start()
        for feeder in feeders:
            feeder.join()
    assert len(web.events) == 800


# -- the Protocols and the adapters -----------------------------------------------------------------------------

def _protocol_methods(protocol: type) -> dict[str, inspect.Signature]:
    names = [n for n in vars(protocol) if not n.startswith("_") and callable(getattr(protocol, n))]
    return {n: inspect.signature(getattr(protocol, n)) for n in names}


@pytest.mark.parametrize(("protocol", "adapter"), [(ZfsPort, Zfs), (RamStorePort, RamStore)])
def test_adapters_have_every_verb_of_their_protocol(protocol, adapter):
    for name, wanted in _protocol_methods(protocol).items():
        have = inspect.signature(getattr(adapter, name))
        assert list(have.parameters) == list(wanted.parameters), f"{adapter.__name__}.{name}{have} vs {wanted}"
    assert isinstance(getattr(adapter, "dialect", None), property) or protocol is not ZfsPort


def test_the_libvirt_adapter_has_every_verb_of_its_protocol():
    """Read from the source: the unit suite cannot import the libvirt adapter."""
    source = Path(inspect.getfile(HypervisorPort)).with_name("hypervisor.py")
    cls = next(n for n in ast.parse(source.read_text()).body if isinstance(n, ast.ClassDef) and n.name == "Hypervisor")
    have = {f.name: [a.arg for a in f.args.posonlyargs + f.args.args + f.args.kwonlyargs]
            for f in cls.body if isinstance(f, ast.FunctionDef)}
    for name, wanted in _protocol_methods(HypervisorPort).items():
        assert name in have, f"Hypervisor has no {name}"
        assert have[name] == list(wanted.parameters), f"Hypervisor.{name}{have[name]} vs {wanted}"


def test_domain_states_are_the_words_the_journal_and_the_docs_use():
    assert [s.value for s in DomainState] == ["running", "paused", "shutoff", "other"]
    assert DomainState.RUNNING == "running"  # a StrEnum: compares and serializes as its word


def test_qemu_img_creates_an_overlay_in_a_file_it_made_first(tmp_path):
    """The file exists, 0600, before qemu-img writes the image into it (made without following a link)."""
    folder = tmp_path / "overlay"
    folder.mkdir(mode=0o711)
    overlay = folder / "web_vda_2026-11-29_01:00:00.qcow2"
    seen = []

    class Checking(Scripted):
        def run(self, argv, **kw):
            seen.append(oct(overlay.stat().st_mode & 0o777))
            return super().run(argv, **kw)

    runner = Checking("")
    QemuImg(runner, binary="/usr/bin/qemu-img").create_overlay(str(overlay), "/tank/web/vda.img", "raw")
    assert runner.calls == [["/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", "-b", "/tank/web/vda.img",
                             "-F", "raw", str(overlay)]]
    assert seen == ["0o600"]


def test_qemu_img_create_overlay_never_writes_over_a_file_or_link(tmp_path):
    folder = tmp_path / "overlay"
    folder.mkdir(mode=0o711)
    (folder / "x.qcow2").write_text("someone's")
    (folder / "l.qcow2").symlink_to(tmp_path / "target")
    runner = Scripted()
    for name in ("x.qcow2", "l.qcow2"):
        with pytest.raises(OverlayPathTaken, match="cannot create overlay .* this cycle's overlay, left alone"):
            QemuImg(runner).create_overlay(str(folder / name), "/tank/web/vda.img", "raw")
    assert runner.calls == [] and (folder / "x.qcow2").read_text() == "someone's"
    assert not (tmp_path / "target").exists()


def test_qemu_img_create_overlay_failure_is_typed_and_dry_run_makes_nothing(tmp_path, caplog):
    folder = tmp_path / "overlay"
    folder.mkdir(mode=0o711)
    overlay = folder / "o.qcow2"
    fail = CommandFailed(["qemu-img"], "failed", 1, "Could not open backing file")
    with pytest.raises(HypervisorError, match="cannot create overlay .* on /tank/web/vda.img"):
        QemuImg(Scripted(fail)).create_overlay(str(overlay), "/tank/web/vda.img", "raw")
    assert overlay.exists()  # made before the failure: the caller recorded it and deletes it
    overlay.unlink()
    caplog.set_level("INFO")
    runner = Scripted()
    QemuImg(runner, dry_run=True).create_overlay(str(overlay), "/tank/web/vda.img", "qcow2")
    assert runner.calls == [] and not overlay.exists()
    assert f"dry-run: would create overlay {overlay} on /tank/web/vda.img" in caplog.text
