"""PURE: the domain XML of a `restore --clone` (libvirt-free: XML text in, XML text out).

A clone gets the new name, no UUID (libvirt makes one), no MAC addresses (fresh ones), its disk sources moved from
the original datasets' mountpoints to the clones', and its serial logs named after it, so nothing of the original
VM's identity or files is shared.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET


def clone_domain_xml(xml: str, new_name: str, path_map: dict[str, str]) -> str:
    """The domain XML for a clone named `new_name`; `path_map`: original mountpoint → the clone's mountpoint."""
    root = ET.fromstring(xml)
    root.find("name").text = new_name
    _drop_identity(root)
    _move_disk_sources(root, path_map)
    # Serial logs and other per-VM files would be shared with the original: give them the clone's name.
    for log_el in root.iter("log"):
        if log_el.get("file"):
            log_el.set("file", re.sub(r"[^/]+$", f"{new_name}-console.log", log_el.get("file")))
    return ET.tostring(root, encoding="unicode")


def _drop_identity(root: ET.Element) -> None:
    uuid = root.find("uuid")
    if uuid is not None:
        root.remove(uuid)
    for iface in root.findall("./devices/interface"):
        mac = iface.find("mac")
        if mac is not None:
            iface.remove(mac)


def moved_path(path: str, path_map: dict[str, str]) -> str | None:
    """`path` below one of `path_map`'s old mountpoints (the deepest), moved below the new one; None if none."""
    for old, new in sorted(path_map.items(), key=lambda kv: -len(kv[0])):
        old = old.rstrip("/")
        if path == old or path.startswith(old + "/"):
            return new.rstrip("/") + path[len(old):]
    return None


def _move_disk_sources(root: ET.Element, path_map: dict[str, str]) -> None:
    for source in root.findall("./devices/disk/source"):
        moved = moved_path(source.get("file") or "", path_map)
        if moved is not None:
            source.set("file", moved)
