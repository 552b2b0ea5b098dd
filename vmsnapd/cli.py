"""Command line front: parses, loads the config, calls one action, renders for humans or JSON."""

from __future__ import annotations

import argparse
import logging
import sys

from vmsnapd import __version__

DEFAULT_CONFIG = "/etc/vmsnapd/vmsnapd.toml"
EX_USAGE = 2
EX_CONFIG = 78

log = logging.getLogger("vmsnapd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmsnapd",
        description="Consistent snapshots of running libvirt VMs on ZFS, with sanoid-compatible names and retention.",
    )
    parser.add_argument("--version", action="version", version=f"vmsnapd {__version__}")
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"policy file (default {DEFAULT_CONFIG})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO lines")
    parser.add_argument("--debug", action="store_true", help="log DEBUG lines, including every command's argv")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub.add_parser("run", help="the daemon, in the foreground (systemd Type=notify)")
    p = sub.add_parser("once", help="one pass like sanoid --cron: take what is due, then prune")
    p.add_argument("--take", action="store_true", help="only take snapshots that are due")
    p.add_argument("--prune", action="store_true", help="only prune")
    p.add_argument("--dry-run", action="store_true", help="say what would be done, change nothing")
    p = sub.add_parser("snapshot", help="take a cycle now for a dataset or a domain")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--period", default="hourly")
    p.add_argument("--dry-run", action="store_true")
    p = sub.add_parser("status", help="per dataset: domain, state, newest snapshots, RAM dumps, errors")
    p.add_argument("--json", action="store_true")
    sub.add_parser("check", help="monitoring, Nagios style (exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)")
    p = sub.add_parser("config", help="configuration commands")
    csub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    csub.add_parser("check", help="validate and print the resolved policy per dataset")
    p = sub.add_parser("import-sanoid", help="print the TOML equivalent of a sanoid.conf")
    p.add_argument("file", metavar="FILE")
    p = sub.add_parser("list", help="restore points: snapshots, time, whether a RAM dump exists")
    p.add_argument("target", metavar="TARGET", nargs="?")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("restore", help="roll back (or clone) and resume from the RAM dump")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("snapshot", metavar="SNAPSHOT")
    p.add_argument("--clone", metavar="NAME")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--force-stop", action="store_true")
    p.add_argument("--yes", action="store_true")
    sub.add_parser("recover", help="finish or undo any cycle a crash interrupted")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    name = args.command if args.command != "config" else f"config {args.config_command}"
    print(f"vmsnapd: '{name}' is not built yet", file=sys.stderr)
    return 1
