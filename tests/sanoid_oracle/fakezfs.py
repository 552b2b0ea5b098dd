#!/usr/bin/python3 -I
"""A fake `zfs` for the sanoid oracle: datasets and snapshots in a small JSON state file.

It answers every call Debian's sanoid 2.1 and vmsnapd make (OpenZFS dialect), so both tools can run
against the same kind of world without real ZFS:

- sanoid: `zfs get -Hrpt snapshot creation`, `zfs list -o name -t filesystem,volume -Hr DS`,
  `zfs snapshot [-r] DS@NAME`, `zfs destroy DS@NAME`;
- vmsnapd: dialect probe `zfs list -H -p -o name -d 0`, `zfs get -H -p -r -o name,property,value
  type,creation,userrefs,mountpoint,mounted ROOT...`, `zfs get -H -p -o value PROP DS@NAME`,
  `zfs snapshot DS@N [DS2@N...]`, `zfs snapshot -r DS@N`, `zfs destroy DS@A[,B...]`;
- the harness: `zfs create DS`, `zfs hold TAG DS@N`, `zfs release TAG DS@N`.

`creation` is this process's clock (`int(time.time())`): run under libfaketime, it is the faked time,
exactly as zfs-fuse stamps snapshots with its daemon's clock. The state file is `FAKE_ZFS_STATE`;
calls are serialized with an flock on it. Every call is appended to `FAKE_ZFS_STATE.log` (argv), so a
test can see what each tool asked. Errors use OpenZFS's wording (vmsnapd classifies them from stderr).
"""

from __future__ import annotations

import fcntl
import getopt
import json
import os
import sys
import time

STATE = os.environ.get("FAKE_ZFS_STATE", "")


def fail(message: str, code: int = 1) -> None:
    sys.stderr.write(message + "\n")
    sys.exit(code)


def load(handle) -> dict:
    handle.seek(0)
    text = handle.read()
    state = json.loads(text) if text.strip() else {}
    state.setdefault("datasets", {})
    state.setdefault("snapshots", [])  # ordered by creation (txg order), as zfs lists them
    return state


def save(handle, state: dict) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(state, indent=0, sort_keys=True))
    handle.flush()


def subtree(state: dict, root: str) -> list[str]:
    return sorted(d for d in state["datasets"] if d == root or d.startswith(root + "/"))


def snap_index(state: dict, full: str) -> int | None:
    for index, snap in enumerate(state["snapshots"]):
        if snap["name"] == full:
            return index
    return None


def cmd_list(state: dict, args: list[str]) -> None:
    opts, operands = getopt.getopt(args, "Hrpo:t:d:s:S:")
    flags = dict(opts)
    fields = flags.get("-o", "name").split(",")
    if fields != ["name"]:
        fail(f"fake zfs: list -o {flags.get('-o')} not supported", 2)
    kinds = flags.get("-t", "filesystem").split(",")
    depth = int(flags["-d"]) if "-d" in flags else (None if "-r" in flags else 0)
    roots = operands or sorted({d.split("/")[0] for d in state["datasets"]})
    out = []
    for root in roots:
        if root not in state["datasets"]:
            fail(f"cannot open '{root}': dataset does not exist")
        for dataset in subtree(state, root):
            if depth is not None and dataset.count("/") - root.count("/") > depth:
                continue
            if "filesystem" in kinds or "all" in kinds:
                out.append(dataset)
            if "snapshot" in kinds or "all" in kinds:
                out += [s["name"] for s in state["snapshots"] if s["name"].split("@")[0] == dataset]
    sys.stdout.write("".join(line + "\n" for line in out))


def props_of(state: dict, name: str) -> dict[str, str]:
    if "@" in name:
        index = snap_index(state, name)
        snap = state["snapshots"][index]
        return {"type": "snapshot", "creation": str(snap["creation"]), "userrefs": str(len(snap.get("holds", []))),
                "mountpoint": "-", "mounted": "-"}
    info = state["datasets"][name]
    return {"type": "filesystem", "creation": str(info["creation"]), "userrefs": "-",
            "mountpoint": info.get("mountpoint", "none"), "mounted": "no"}


def _get_targets(state: dict, targets: list[str], recursive: bool) -> tuple[list[str], list[str]]:
    """What `zfs get [-r] … TARGETS` reports on (every pool without targets), and the targets that do not exist."""
    names: list[str] = []
    missing = []
    for target in targets or sorted({d.split("/")[0] for d in state["datasets"]}):
        if "@" in target:
            (names if snap_index(state, target) is not None else missing).append(target)
            continue
        if target not in state["datasets"]:
            missing.append(target)
            continue
        for dataset in subtree(state, target) if recursive else [target]:
            names.append(dataset)
            if recursive:
                names += [s["name"] for s in state["snapshots"] if s["name"].split("@")[0] == dataset]
    return names, missing


def cmd_get(state: dict, args: list[str]) -> None:
    opts, operands = getopt.getopt(args, "Hrpo:t:d:s:")
    flags = dict(opts)
    if not operands:
        fail("missing property argument", 2)
    properties = operands[0].split(",")
    fields = flags.get("-o", "name,property,value,source").split(",")
    types = flags.get("-t", "all").split(",")
    names, missing = _get_targets(state, operands[1:], recursive="-r" in flags)
    out = []
    for name in names:
        values = props_of(state, name)
        if "all" not in types and values["type"] not in types:
            continue
        for prop in properties:
            row = {"name": name, "property": prop, "value": values.get(prop, "-"), "source": "-"}
            out.append("\t".join(row[f] for f in fields))
    sys.stdout.write("".join(line + "\n" for line in out))
    for target in missing:
        sys.stderr.write(f"cannot open '{target}': dataset does not exist\n")
    if missing:
        sys.exit(1)


def cmd_snapshot(state: dict, args: list[str]) -> None:
    opts, operands = getopt.getopt(args, "ro:")
    recursive = ("-r", "") in opts
    now = int(time.time())
    new = []
    for operand in operands:
        dataset, _, name = operand.partition("@")
        if dataset not in state["datasets"]:
            fail(f"cannot open '{dataset}': dataset does not exist")
        for ds in subtree(state, dataset) if recursive else [dataset]:
            full = f"{ds}@{name}"
            if snap_index(state, full) is not None or full in new:
                fail(f"cannot create snapshot '{full}': dataset already exists")
            new.append(full)
    state["snapshots"] += [{"name": full, "creation": now} for full in new]


def cmd_destroy(state: dict, args: list[str]) -> None:
    opts, operands = getopt.getopt(args, "rRfnpv")
    if len(operands) != 1 or "@" not in operands[0]:
        fail("fake zfs: only snapshot destroy is supported", 2)
    dataset, _, names = operands[0].partition("@")
    fulls = [f"{dataset}@{name}" for name in names.split(",")]
    for full in fulls:
        index = snap_index(state, full)
        if index is None:
            fail("could not find any snapshots to destroy; check snapshot names.")
        if state["snapshots"][index].get("holds"):
            fail(f"cannot destroy snapshot {full}: dataset is busy")
    state["snapshots"] = [s for s in state["snapshots"] if s["name"] not in fulls]


def cmd_create(state: dict, args: list[str]) -> None:
    opts, operands = getopt.getopt(args, "po:")
    for dataset in operands:
        parent = dataset.rpartition("/")[0]
        if parent and parent not in state["datasets"]:
            fail(f"cannot create '{dataset}': parent does not exist")
        props = dict(value.split("=", 1) for flag, value in opts if flag == "-o")
        state["datasets"][dataset] = {"creation": int(time.time()), "mountpoint": props.get("mountpoint", "none")}


def cmd_hold(state: dict, args: list[str], release: bool = False) -> None:
    tag, full = args[-2], args[-1]
    index = snap_index(state, full)
    if index is None:
        fail(f"cannot open '{full}': dataset does not exist")
    holds = set(state["snapshots"][index].get("holds", []))
    holds = holds - {tag} if release else holds | {tag}
    state["snapshots"][index]["holds"] = sorted(holds)


COMMANDS = {"list": cmd_list, "get": cmd_get, "snapshot": cmd_snapshot, "destroy": cmd_destroy,
            "create": cmd_create, "hold": cmd_hold, "release": lambda s, a: cmd_hold(s, a, release=True)}
READ_ONLY = {"list", "get"}


def main(argv: list[str]) -> None:
    if not STATE:
        fail("fake zfs: FAKE_ZFS_STATE is not set", 2)
    with open(STATE + ".log", "a") as log:
        log.write(json.dumps(argv) + "\n")
    if not argv or argv[0] not in COMMANDS:
        fail(f"fake zfs: unsupported command {argv[:1]}", 2)
    with open(STATE, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        state = load(handle)
        try:
            COMMANDS[argv[0]](state, argv[1:])
        except getopt.GetoptError as exc:
            fail(f"invalid option: {exc}", 2)
        if argv[0] not in READ_ONLY:
            save(handle, state)


if __name__ == "__main__":
    main(sys.argv[1:])
