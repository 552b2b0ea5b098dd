#!/usr/bin/env python3
"""A small `zfs`/`zpool` stand-in for running Debian's syncoid (or sanoid) against zfs-fuse 0.7.

Installed as `zfs` and `zpool` first on PATH (lab.make_zfs_shim). Each call is passed to the real tool, with:
- `zfs get ... -t snapshot ...` (zfs-fuse has no `-t` for get): run without `-t`, only snapshot lines kept;
- `zfs send` (any form): its stream is passed through and its size appended to $ZFS_SHIM_LOG as
  `send<TAB>BYTES<TAB>ARGS` — how the lab measures what a replication pass carries;
- `zfs send -nvP …` (a size estimate zfs-fuse cannot make): exit 1, syncoid then shows the size as unknown.
Every call is logged to $ZFS_SHIM_LOG (`call<TAB>TOOL<TAB>ARGS`) when that variable is set.
"""
import os
import subprocess
import sys

REAL = {"zfs": "/usr/sbin/zfs", "zpool": "/usr/sbin/zpool"}


def log(line: str) -> None:
    path = os.environ.get("ZFS_SHIM_LOG")
    if path:
        with open(path, "a") as out:
            out.write(line + "\n")


def main() -> int:
    tool = os.path.basename(sys.argv[0])
    args = sys.argv[1:]
    real = REAL.get(tool, f"/usr/sbin/{tool}")
    log(f"call\t{tool}\t{' '.join(args)}")
    if tool == "zfs" and args[:1] == ["get"] and "-t" in args:
        at = args.index("-t")
        kinds = args[at + 1]
        rest = args[:at] + args[at + 2:]
        proc = subprocess.run([real, *rest], capture_output=True, text=True)
        sys.stderr.write(proc.stderr)
        for line in proc.stdout.splitlines():
            name = line.split("\t", 1)[0]
            if "snapshot" in kinds.split(",") and "@" in name or "@" not in name and kinds != "snapshot":
                print(line)
        return proc.returncode
    if tool == "zfs" and args[:1] == ["send"]:
        if any(a.startswith("-") and "n" in a and not a.startswith("--") for a in args[1:]):
            print("zfs-fuse cannot estimate a send size", file=sys.stderr)
            return 1
        proc = subprocess.Popen([real, *args], stdout=subprocess.PIPE)
        total = 0
        out = sys.stdout.buffer
        while chunk := proc.stdout.read(1 << 20):
            total += len(chunk)
            out.write(chunk)
        out.flush()
        code = proc.wait()
        log(f"send\t{total}\t{' '.join(args[1:])}")
        return code
    return subprocess.run([real, *args]).returncode


if __name__ == "__main__":
    sys.exit(main())
