#!/usr/bin/env python3
"""A fake `zfs` for resolving configurations without ZFS: the datasets are the lines of $FAKE_ZFS_DATASETS.

Answers only what sanoid's `init` and `vmsnapd config check` ask: `zfs list -o name -t filesystem,volume -Hr X`,
`zfs get -Hrpt snapshot creation` (no snapshots) and vmsnapd's `zfs get -H -p -r -o name,property,value … ROOTS`.
Anything else fails loudly, so a test cannot pass by accident.
"""

import os
import sys


def under(datasets, root):
    return [name for name in datasets if name == root or name.startswith(root + "/")]


def main(argv):
    with open(os.environ["FAKE_ZFS_DATASETS"], encoding="utf-8") as handle:
        datasets = [line.rstrip("\n") for line in handle if line.strip()]
    if argv[:6] == ["list", "-o", "name", "-t", "filesystem,volume", "-Hr"] and len(argv) == 7:
        found = under(datasets, argv[6])
        if not found:
            print(f"cannot open '{argv[6]}': dataset does not exist", file=sys.stderr)
            return 1
        print("\n".join(found))
        return 0
    if argv == ["get", "-Hrpt", "snapshot", "creation"]:
        return 0
    if argv[:7] == ["get", "-H", "-p", "-r", "-o", "name,property,value", "type,creation,userrefs,mountpoint,mounted"]:
        status = 0
        for root in argv[7:]:
            found = under(datasets, root)
            if not found:
                print(f"cannot open '{root}': dataset does not exist", file=sys.stderr)
                status = 1
            for name in found:
                for prop, value in (("type", "filesystem"), ("creation", "1700000000"), ("userrefs", "-"),
                                    ("mountpoint", "none"), ("mounted", "no")):
                    print(f"{name}\t{prop}\t{value}")
        return status
    print(f"fake zfs: unexpected call: zfs {' '.join(argv)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
