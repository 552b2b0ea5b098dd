"""The domain XML of a clone (vmsnapd.clonexml): new name, no UUID or MACs, disks moved to the clones' mountpoints,
serial logs renamed; pure, no libvirt."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from vmsnapd.clonexml import clone_domain_xml, moved_path

XML = """<domain type='qemu'>
  <name>web</name>
  <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
  <devices>
    <disk type='file' device='disk'><source file='/tank/VM/web/vda.img'/><target dev='vda'/></disk>
    <disk type='file' device='disk'><source file='/tank/VM/web-data/sub/vdb.qcow2'/><target dev='vdb'/></disk>
    <disk type='file' device='disk'><source file='/srv/shared.iso'/><target dev='sda'/></disk>
    <disk type='network' device='disk'><source protocol='nbd' name='x'/><target dev='vdc'/></disk>
    <interface type='network'><mac address='52:54:00:12:34:56'/><source network='default'/></interface>
    <serial type='pty'><log file='/var/log/libvirt/qemu/web-console.log'/></serial>
  </devices>
</domain>"""

MAP = {"/tank/VM/web": "/tank/VM/copy", "/tank/VM/web-data/": "/tank/VM/copy-web-data"}


def test_the_clone_gets_its_own_identity_and_files() -> None:
    root = ET.fromstring(clone_domain_xml(XML, "copy", MAP))
    assert root.findtext("name") == "copy"
    assert root.find("uuid") is None
    assert root.find("./devices/interface/mac") is None
    assert root.find("./devices/interface/source").get("network") == "default"
    sources = [s.get("file") for s in root.findall("./devices/disk/source")]
    assert sources == ["/tank/VM/copy/vda.img", "/tank/VM/copy-web-data/sub/vdb.qcow2", "/srv/shared.iso", None]
    assert root.find("./devices/serial/log").get("file") == "/var/log/libvirt/qemu/copy-console.log"


@pytest.mark.parametrize(("path", "expected"), [
    ("/tank/VM/web", "/tank/VM/copy"),
    ("/tank/VM/web/a/b.img", "/tank/VM/copy/a/b.img"),
    ("/tank/VM/web2/x.img", None),  # a prefix of the name is not the folder
    ("/tank/VM/web/child/x.img", "/tank/VM/copy-child/x.img"),  # the deepest mountpoint wins
    ("/elsewhere/x.img", None),
])
def test_moved_path(path: str, expected: str | None) -> None:
    mapping = {"/tank/VM/web": "/tank/VM/copy", "/tank/VM/web/child": "/tank/VM/copy-child"}
    assert moved_path(path, mapping) == expected
