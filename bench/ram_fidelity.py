#!/usr/bin/env python3
"""RAM fidelity of libvirt's memory snapshot on this host: does the RAM file hold exactly the guest's RAM at the
instant the guest stopped? Live (the guest runs while its RAM is written, as vmsnapd's `live = true`) against
not live, interleaved.

With `snapshot='manual'` disks (vmsnapd's pause method) libvirt leaves the guest paused when
virDomainSnapshotCreateXML returns, so the guest's RAM at that moment *is* the instant the file must hold. Per
cycle: a busy TCG counter guest (the consistency campaign's: counter records every ~20 ms, `--dirty-mib` of a
tmpfs copied over and over) → snapshot with its RAM (live or not) → while still paused, QEMU's `pmemsave`
writes the guest's physical RAM to a file → resume → every 4 KiB page of `pc.ram` above 1 MiB in the RAM file
(the last copy of the page in QEMU's migration stream) is compared with the guest's page. Any page that differs
is a write the migration missed: the resumed image would mix two moments (what the guest kernel reports as
`list_del corruption` and the like). Not-live cycles must show 0 (they check the parser and the comparison).

Why it can differ: QEMU before 9.0 under TCG loses dirty-page tracking in live migration — the fast path of
cpu_physical_memory_sync_dirty_bitmap() clears dirty bits without resetting the TCG TLB, so later stores through
an already-dirty TLB entry are not tracked (QEMU commit 03bfc2188f06, "physmem: Fix migration dirty bitmap
coherency with TCG memory access", 9.0; not in Debian 12's 7.2.x). See docs/benchmarks.md, goal 6.

A prototype/measurement, not product code; no pool needed (the guest's disk sits in the run directory).

    sudo .venv/bin/python bench/ram_fidelity.py [-n 10] [--memory 256] [--dirty-mib 32] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import mmap
import pwd
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import lab, tear_down  # noqa: E402

PAGE = 4096
QEVM = b"QEVM\x00\x00\x00\x03"  # QEMU_VM_FILE_MAGIC, version 3
# migration/ram.c RAM_SAVE_FLAG_*
F_ZERO, F_MEM_SIZE, F_PAGE, F_EOS, F_CONTINUE = 0x02, 0x04, 0x08, 0x10, 0x20
# migration/savevm.c QEMU_VM_*
SECTION_PART, SECTION_END, SECTION_FOOTER = 0x02, 0x03, 0x7E


class StreamError(ValueError):
    """The RAM file is not the migration stream this parser knows (QEMU 7.x precopy, no compression/xbzrle)."""


@dataclass
class RamImage:
    """Where each page of one RAM block is in the file: the last copy wins (an int: a zero-page fill byte)."""
    pages: dict[int, int | tuple[int]] = field(default_factory=dict)
    sections: int = 0        # START + PART... + END sections of the RAM
    copies: int = 0          # page records read (more than the pages: pages sent again after being dirtied)


class _Reader:
    def __init__(self, data, pos: int):
        self.data, self.pos = data, pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise StreamError(f"stream ends at {len(self.data)} inside a record at {self.pos}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self) -> int:
        return self.take(1)[0]

    def be32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def be64(self) -> int:
        return struct.unpack(">Q", self.take(8))[0]

    def idstr(self) -> bytes:
        return self.take(self.u8())


def _ram_payload(r: _Reader, img: RamImage, block: bytes, current: list[bytes]) -> None:
    """One section's RAM records, up to and including RAM_SAVE_FLAG_EOS."""
    while True:
        header = r.be64()
        addr, flags = header & ~(PAGE - 1), header & (PAGE - 1)
        if flags & F_MEM_SIZE:
            total = 0
            while total < addr:  # the block list: name, used length (no postcopy, no ignore-shared)
                r.idstr()
                total += r.be64()
            continue
        if flags & F_EOS:
            return
        if not flags & (F_ZERO | F_PAGE) or flags & ~(F_ZERO | F_PAGE | F_CONTINUE):
            raise StreamError(f"unsupported RAM record flags {flags:#x} at {r.pos - 8}")
        if not flags & F_CONTINUE:
            current[0] = r.idstr()
        img.copies += 1
        if flags & F_ZERO:
            fill = r.u8()
            if current[0] == block:
                img.pages[addr] = fill
        else:
            if current[0] == block:
                img.pages[addr] = (r.pos,)
            r.pos += PAGE


def parse_ram(data, block: bytes = b"pc.ram") -> RamImage:
    """The pages of `block` in a libvirt save image (its header and XML, then QEMU's migration stream): the RAM
    sections only (START, PART..., END); the device sections after them are not read."""
    start = data.find(QEVM)
    if start < 0:
        raise StreamError("no QEMU migration stream (QEVM magic) in the file")
    found = data.find(b"\x01", start + len(QEVM))
    while found >= 0 and data[found + 5:found + 9] != b"\x03ram":
        found = data.find(b"\x01", found + 1)
        if found - start > 65536:
            found = -1
    if found < 0:
        raise StreamError("no RAM section start in the first 64 KiB of the stream")
    r = _Reader(data, found + 1)
    section_id = r.be32()
    r.idstr()
    r.be32(), r.be32()  # instance id, version id
    img, current = RamImage(), [b""]
    while True:
        _ram_payload(r, img, block, current)
        img.sections += 1
        if r.data[r.pos] == SECTION_FOOTER:
            r.u8()
            if r.be32() != section_id:
                raise StreamError(f"section footer of another section at {r.pos - 5}")
        kind = r.u8()
        if kind not in (SECTION_PART, SECTION_END) or r.be32() != section_id:
            raise StreamError(f"section type {kind:#x} at {r.pos - 1} where the RAM went on")
        if kind == SECTION_END:
            _ram_payload(r, img, block, current)
            img.sections += 1
            return img


def compare(img: RamImage, stream, guest, skip_below: int = 1 << 20) -> tuple[int, int, list[str]]:
    """(pages compared, pages that differ, the first differing pages: guest physical address/bytes that differ)."""
    size = len(guest) - len(guest) % PAGE
    compared, differ = 0, []
    zero_pages: dict[int, bytes] = {}
    for addr in range(skip_below, size, PAGE):
        where = img.pages.get(addr)
        if where is None:
            differ.append(f"{addr:#x}/missing")
            continue
        if isinstance(where, int):
            expected = zero_pages.setdefault(where, bytes([where]) * PAGE)
        else:
            expected = stream[where[0]:where[0] + PAGE]
        compared += 1
        actual = guest[addr:addr + PAGE]
        if actual != expected:
            differ.append(f"{addr:#x}/{sum(a != b for a, b in zip(actual, expected, strict=True))}")
    return compared, len(differ), differ[:20]


def snapshot_xml(memory_file: Path, vm) -> str:
    disks = "".join(f"<disk name='{d.target}' snapshot='manual'/>" for d in vm.disks)
    disks += f"<disk name='{vm.token_target}' snapshot='no'/>"
    return (f"<domainsnapshot><name>fidelity{time.time_ns()}</name><memory snapshot='external' "
            f"file='{memory_file}'/><disks>{disks}</disks></domainsnapshot>")


def one_cycle(vm, workdir: Path, k: int, live: bool, memory_mib: int) -> dict:
    import libvirt
    import libvirt_qemu

    ram_file, guest_file = workdir / f"ram{k}.img", workdir / "pmem" / f"guest{k}.bin"
    lab.wait_counter_advances(vm, by=20, timeout=120)
    flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA | (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE if live else 0)
    t0 = time.monotonic()
    vm.dom.snapshotCreateXML(snapshot_xml(ram_file, vm), flags)
    took = time.monotonic() - t0
    state = vm.dom.state()[0]
    try:
        if state != libvirt.VIR_DOMAIN_PAUSED:
            raise lab.LabError(f"guest not paused after the snapshot (state {state})")
        libvirt_qemu.qemuMonitorCommand(vm.dom, f'pmemsave 0 {memory_mib << 20} "{guest_file}"',
                                        libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    finally:
        vm.dom.resume()
    with open(ram_file, "rb") as f1, open(guest_file, "rb") as f2, \
            mmap.mmap(f1.fileno(), 0, access=mmap.ACCESS_READ) as stream, \
            mmap.mmap(f2.fileno(), 0, access=mmap.ACCESS_READ) as guest:
        img = parse_ram(stream)
        compared, differ, first = compare(img, stream, guest)
    ram_file.unlink()
    guest_file.unlink()
    return {"k": k, "live": live, "snapshot_s": round(took, 2), "ram_sections": img.sections,
            "page_records": img.copies, "pages_compared": compared, "pages_differ": differ,
            "first_differing": first}


def run(args) -> list[dict]:
    results: list[dict] = []
    root = lab.make_run_dir("fidelity")
    try:
        pmem = root / "pmem"
        pmem.mkdir(mode=0o700)
        qemu_user = pwd.getpwnam("libvirt-qemu")
        import os
        os.chown(pmem, qemu_user.pw_uid, qemu_user.pw_gid)  # QEMU itself writes pmemsave's file
        vm = lab.create_vm(disk_paths=[root / "counter.img"], memory_mib=args.memory,
                           dirty_mib=min(args.dirty_mib, args.memory // 8), wait=True)
        for k in range(1, 2 * args.n + 1):
            live = k % 2 == 1
            r = one_cycle(vm, root, k, live, args.memory)
            results.append(r)
            print(f"  {k:3d} {'live    ' if live else 'not live'} snapshot {r['snapshot_s']:5.1f}s  RAM sections "
                  f"{r['ram_sections']:3d}  page records {r['page_records']:6d}  pages differing "
                  f"{r['pages_differ']}/{r['pages_compared']} {' '.join(r['first_differing'][:5])}", flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
    finally:
        tear_down(None, root)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=10, help="cycles per mode (live, not live), interleaved (default 10)")
    ap.add_argument("--memory", type=int, default=256, help="guest RAM in MiB (default 256)")
    ap.add_argument("--dirty-mib", type=int, default=32, help="RAM the guest dirties continuously (default 32)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    try:
        lab.check_lab()
        results = run(args)
    except (lab.LabError, StreamError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    for live in (True, False):
        rr = [r for r in results if r["live"] == live]
        bad = [r for r in rr if r["pages_differ"]]
        print(f"{'live' if live else 'not live'}: {len(bad)}/{len(rr)} RAM files differ from the paused guest's RAM "
              f"({sum(r['pages_differ'] for r in rr)} pages in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
