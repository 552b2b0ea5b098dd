"""The pure parts of a restore on a backup host (vmsnapd.actions.backup_restore): what the saved definition needs
from this host, and moving its disks onto the clones. The whole restore is proven on the lab
(tests/integration/test_replication.py)."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from types import SimpleNamespace

from vmsnapd.actions.backup_restore import host_problems, moved_domain_xml

XML = """<domain type='qemu'><name>web</name>
  <os><kernel>{kernel}</kernel><initrd>/nonexistent/initrd.img</initrd></os>
  <devices>
    <emulator>/bin/sh</emulator>
    <disk type='file'><source file='/srcpool/VM/web/web-vda.img'/><target dev='vda'/></disk>
    <disk type='file'><source file='{other}'/><target dev='vdb'/></disk>
    <interface type='bridge'><source bridge='br-nonexistent0'/></interface>
    <interface type='network'><source network='{network}'/></interface>
    <serial type='file'><source path='/nonexistent-dir/console.log'/></serial>
  </devices></domain>"""


def ctx_with(networks: dict[str, bool]):
    """A context whose hypervisor knows these networks (name -> active)."""
    return SimpleNamespace(hypervisor=SimpleNamespace(network_active=networks.get))


def test_every_missing_host_fact_is_named(tmp_path):
    kernel = tmp_path / "vmlinuz"
    kernel.write_text("k")
    xml = XML.format(kernel=kernel, other="/nonexistent/token.img", network="backup-net")
    problems = host_problems(ctx_with({}), xml, {"/srcpool/VM/web/web-vda.img"})
    text = "; ".join(problems)
    assert "bridge br-nonexistent0 does not exist" in text
    assert "network backup-net is not defined" in text
    assert "initrd /nonexistent/initrd.img does not exist" in text
    assert "disk vdb /nonexistent/token.img does not exist" in text
    assert "folder /nonexistent-dir" in text
    assert "vmlinuz" not in text and "web-vda.img" not in text and "emulator" not in text  # present or moved
    inactive = host_problems(ctx_with({"backup-net": False}), xml, set())
    assert any("network backup-net is not active" in p for p in inactive)
    assert any("disk vda /srcpool/VM/web/web-vda.img does not exist" in p for p in inactive)


def test_nothing_to_say_when_the_host_has_it_all(tmp_path):
    other = tmp_path / "token.img"
    other.write_text("t")
    xml = f"""<domain><name>web</name><os><kernel>{other}</kernel></os><devices>
      <disk type='file'><source file='/src/x.img'/><target dev='vda'/></disk>
      <disk type='file'><source file='{other}'/><target dev='vdb'/></disk>
      <interface type='network'><source network='default'/></interface></devices></domain>"""
    assert host_problems(ctx_with({"default": True}), xml, {"/src/x.img"}) == []


def test_moved_disks_point_at_the_clones_and_nothing_else_changes():
    xml = XML.format(kernel="/k", other="/keep/token.img", network="n")
    moved = ET.fromstring(moved_domain_xml(xml, {"/srcpool/VM/web/web-vda.img": "/backup/VM/web-r/web-vda.img"}))
    files = [s.get("file") for s in moved.findall("./devices/disk/source")]
    assert files == ["/backup/VM/web-r/web-vda.img", "/keep/token.img"]
    assert moved.find("name").text == "web"
