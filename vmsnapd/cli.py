"""Command line front: parses, loads the config, calls one action, renders for humans or JSON."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from vmsnapd import __version__
from vmsnapd.actions.context import Context
from vmsnapd.actions.report import PassReport, TargetOutcome
from vmsnapd.config import ConfigError, load_config, resolve
from vmsnapd.lock import LockBusy, pass_lock
from vmsnapd.logsetup import setup_logging
from vmsnapd.names import InvalidName
from vmsnapd.runner import Runner
from vmsnapd.hypervisor import HypervisorError
from vmsnapd.zfs import Zfs, ZfsError

DEFAULT_CONFIG = "/etc/vmsnapd/vmsnapd.toml"
EX_OK = 0
EX_FAILED = 1
EX_USAGE = 2
EX_CONFIG = 78
LOCK_WAIT_S = 60.0  # default of --lock-wait: a pass waits this long for the one holding the lock

log = logging.getLogger("vmsnapd")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 or more seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmsnapd",
        description="Consistent snapshots of running libvirt VMs on ZFS, with sanoid-compatible names and retention.",
    )
    parser.add_argument("--version", action="version", version=f"vmsnapd {__version__}")
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"policy file (default {DEFAULT_CONFIG})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO lines")
    parser.add_argument("--debug", action="store_true", help="log DEBUG lines, including every command's argv")
    parser.add_argument("--lock-wait", type=_seconds, default=LOCK_WAIT_S, metavar="SECONDS",
                        help=f"how long to wait for another pass to finish before giving up with exit 1 "
                             f"(default {LOCK_WAIT_S:.0f})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub.add_parser("run", help="the daemon, in the foreground (systemd Type=notify)")
    p = sub.add_parser("once", help="one pass like sanoid --cron: take what is due, then prune")
    p.add_argument("--take", action="store_true", help="only take snapshots that are due")
    p.add_argument("--prune", action="store_true", help="only prune")
    p.add_argument("--dry-run", action="store_true", help="say what would be done, change nothing")
    p.add_argument("--force", action="store_true",
                   help="also delete RAM dumps that have no manifest (half-written or foreign-looking) when orphaned")
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
    p = sub.add_parser("restore", help="verify, set the current state aside, restore (or clone), resume from RAM")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("snapshot", metavar="SNAPSHOT", nargs="?")
    p.add_argument("--undo", action="store_true", help="put back the state the last in-place restore set aside")
    p.add_argument("--drop-aside", action="store_true", help="destroy the state the last in-place restore set aside")
    p.add_argument("--clone", metavar="NAME")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--force-stop", action="store_true")
    p.add_argument("--yes", action="store_true")
    sub.add_parser("recover", help="finish or undo any cycle a crash interrupted")
    return parser


def _build_context(args: argparse.Namespace, dry_run: bool = False) -> Context:
    config = load_config(Path(args.config))
    runner = Runner()
    return Context(config=config, config_path=Path(args.config), runner=runner,
                   zfs=Zfs(runner, dry_run=dry_run), dry_run=dry_run)


def _render_outcomes(report: PassReport) -> None:
    if not report.outcomes and not report.errors and not report.dumps_deleted:
        print("nothing to do" + (" (dry run)" if report.dry_run else ""))
    for outcome in report.outcomes:
        print(_outcome_line(outcome))
    if report.dumps_deleted:
        verb = "would delete" if report.dry_run else "deleted"
        print(f"RAM dumps: {verb} {len(report.dumps_deleted)}, {report.dump_bytes_freed / 2**20:.1f} MiB")
        for path in report.dumps_deleted:
            print(f"    {path}")
    for error in report.errors:
        print(f"ERROR {error}")


def _outcome_line(o: TargetOutcome) -> str:
    verb = {"take": "took", "prune": "destroyed"}.get(o.action, o.action)
    if o.dry_run:
        verb = "would take" if o.action == "take" else "would destroy"
    head = f"{o.target}{f' ({o.domain})' if o.domain else ''}"
    body = ", ".join(s.split("@", 1)[1] for s in o.snapshots) or "nothing"
    line = f"{'FAILED' if not o.ok else 'ok'}  {head}: {verb} {body} [{o.duration_ms} ms]"
    for w in o.warnings:
        line += f"\n    warning: {w}"
    if o.error:
        line += f"\n    error: {o.error}"
    return line


def cmd_once(args: argparse.Namespace) -> int:
    from vmsnapd.actions.passes import run_pass

    ctx = _build_context(args, dry_run=args.dry_run)
    with pass_lock(ctx.state_dir, wait_s=args.lock_wait):
        report = run_pass(ctx, take=args.take or not args.prune, prune_too=args.prune or not args.take,
                          force_dumps=args.force)
    _render_outcomes(report)
    return EX_FAILED if report.failed else EX_OK


def cmd_snapshot(args: argparse.Namespace) -> int:
    from vmsnapd.actions.status import record_results
    from vmsnapd.actions.take import take_now
    from vmsnapd.names import PERIODS

    if args.period not in PERIODS:
        print(f"vmsnapd: --period must be one of {', '.join(PERIODS)}", file=sys.stderr)
        return EX_USAGE
    ctx = _build_context(args, dry_run=args.dry_run)
    with pass_lock(ctx.state_dir, wait_s=args.lock_wait):
        outcome = take_now(ctx, ctx.survey(), args.target, args.period)
        if outcome is not None:
            record_results(ctx, PassReport(outcomes=[outcome]))
    if outcome is None:
        print(f"vmsnapd: {args.target} is neither a dataset managed by {args.config} nor the domain of one",
              file=sys.stderr)
        return EX_FAILED
    print(_outcome_line(outcome))
    return EX_OK if outcome.ok else EX_FAILED


def cmd_config_check(args: argparse.Namespace) -> int:
    ctx = _build_context(args)
    config = ctx.config
    try:
        existing = sorted(ctx.zfs.list_tree(ctx.config_roots()).datasets)
        where = "datasets that exist now"
    except ZfsError as exc:
        existing = sorted(config.datasets)
        where = f"configured names only (cannot list datasets: {exc})"
    policies = resolve(config, existing)
    print(f"{args.config}: valid. Resolved policy for {len(policies)} dataset(s) ({where}):")
    for name, policy in policies.items():
        data = policy.model_dump(exclude={"name"})
        print(f"\n[{name}]")
        for key, value in data.items():
            print(f"  {key} = {json.dumps(value, default=str)}")
    return EX_OK


def cmd_import_sanoid(args: argparse.Namespace) -> int:
    from vmsnapd.sanoid_import import sanoid_to_toml

    try:
        text = Path(args.file).read_text()
    except OSError as exc:
        print(f"vmsnapd: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EX_FAILED
    sys.stdout.write(sanoid_to_toml(text))
    return EX_OK


def cmd_list(args: argparse.Namespace) -> int:
    from vmsnapd.actions.restore import RestoreFailed, restore_points

    ctx = _build_context(args)
    try:
        points = restore_points(ctx, args.target)
    except RestoreFailed as exc:
        print(f"vmsnapd: {exc}", file=sys.stderr)
        return EX_FAILED
    if args.json:
        print(json.dumps([p.model_dump(mode="json") for p in points], indent=2))
        return EX_OK
    for p in points:
        memory = f"RAM {p.ram_bytes / 2**20:.0f} MiB" if p.ram_dump else "disk only"
        print(f"{p.dataset}@{p.snapshot}  {p.creation:%Y-%m-%d %H:%M:%S}  {memory}{'  held' if p.held else ''}")
    return EX_OK


def cmd_recover(args: argparse.Namespace) -> int:
    from vmsnapd.actions.recover import recover

    ctx = _build_context(args)
    with pass_lock(ctx.state_dir, wait_s=args.lock_wait):
        report = recover(ctx)
    for line in report.actions:
        print(line)
    for line in report.errors:
        print(f"ERROR {line}")
    if not report.actions and not report.errors:
        print("nothing to recover")
    return EX_FAILED if report.failed else EX_OK


def cmd_status(args: argparse.Namespace) -> int:
    from vmsnapd.actions.status import format_age, host_status

    ctx = _build_context(args)
    status = host_status(ctx)
    if args.json:
        print(status.model_dump_json(indent=2))
        return EX_OK
    now = ctx.now()
    for entry in status.datasets:
        vm = f"{entry.domain} ({entry.vm_state})" if entry.domain else "no VM"
        print(f"{entry.dataset}  [{vm}]")
        for period, ps in entry.periods.items():
            newest = f"{ps.newest} ({format_age(now - ps.newest_at)} ago)" if ps.newest else "none"
            due = "due now" if ps.due_now else (f"next {ps.next_due:%Y-%m-%d %H:%M}" if ps.next_due else "not taken")
            print(f"  {period:<10} {ps.count:>3}/{ps.kept:<3} newest {newest}; {due}")
        print(f"  RAM dumps: {entry.ram_dumps}, {entry.ram_bytes / 2**20:.1f} MiB")
        for overlay in entry.overlays:
            print(f"  ON OVERLAY: {overlay}  (run `vmsnapd recover`)")
        for last in (entry.last_take, entry.last_prune):
            if last and not last.ok:
                print(f"  last {last.action} FAILED at {last.at:%Y-%m-%d %H:%M:%S}: {last.error}")
    for pool, cap in status.pools.items():
        print(f"pool {pool}: {cap}% used")
    for path in status.leftover_overlay_files:
        print(f"leftover in overlay_dir: {path}")
    sys.stdout.write("".join(f"kept aside by a restore: {line}\n" for line in status.kept_aside))
    for problem in status.problems:
        print(f"problem: {problem}")
    return EX_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from vmsnapd.actions.restore import RestoreFailed, execute_restore, plan_restore

    if args.undo or args.drop_aside:
        return _cmd_restore_aside(args)
    if args.snapshot is None:
        print("vmsnapd: restore needs SNAPSHOT (or --undo / --drop-aside)", file=sys.stderr)
        return EX_USAGE
    ctx = _build_context(args)
    with pass_lock(ctx.state_dir, wait_s=args.lock_wait):
        try:
            plan = plan_restore(ctx, args.target, args.snapshot, clone=args.clone, no_memory=args.no_memory,
                                force_stop=args.force_stop)
        except RestoreFailed as exc:
            print(f"vmsnapd: restore refused: {exc}", file=sys.stderr)
            return EX_FAILED
        print(f"restore of {plan.domain} to {plan.snapshot}:")
        for step in plan.steps:
            print(f"  - {step}")
        for line in plan.verified:
            print(f"  verified: {line}")
        for name in plan.newer_snapshots_kept_aside:
            print(f"    kept aside (newer): {name}")
        if not args.yes:
            print("nothing done: add --yes to carry this out", file=sys.stderr)
            return EX_USAGE
        try:
            done = execute_restore(ctx, plan)
        except RestoreFailed as exc:
            print(f"vmsnapd: restore FAILED: {exc}", file=sys.stderr)
            return EX_FAILED
    for line in done:
        print(f"done: {line}")
    return EX_OK


def _cmd_restore_aside(args: argparse.Namespace) -> int:
    """`restore --undo TARGET` / `restore --drop-aside TARGET`: the state an in-place restore set aside."""
    from vmsnapd.actions.restore import RestoreFailed, execute_drop, execute_undo, plan_drop, plan_undo

    if args.undo and args.drop_aside or args.snapshot or args.clone:
        print("vmsnapd: --undo and --drop-aside take only TARGET, and not both", file=sys.stderr)
        return EX_USAGE
    what = "undo" if args.undo else "drop-aside"
    ctx = _build_context(args)
    with pass_lock(ctx.state_dir, wait_s=args.lock_wait):
        try:
            plan = plan_undo(ctx, args.target) if args.undo else plan_drop(ctx, args.target)
        except RestoreFailed as exc:
            print(f"vmsnapd: restore --{what} refused: {exc}", file=sys.stderr)
            return EX_FAILED
        when = f"{plan.record.at:%Y-%m-%d %H:%M:%S}"
        print(f"restore --{what} of {plan.domain} (restored to {plan.record.snapshot} at {when}):")
        for step in plan.steps:
            print(f"  - {step}")
        if not args.yes:
            print("nothing done: add --yes to carry this out", file=sys.stderr)
            return EX_USAGE
        try:
            done = execute_undo(ctx, plan) if args.undo else execute_drop(ctx, plan)
        except RestoreFailed as exc:
            print(f"vmsnapd: restore --{what} FAILED: {exc}", file=sys.stderr)
            return EX_FAILED
    for line in done:
        print(f"done: {line}")
    return EX_OK


def cmd_run(args: argparse.Namespace) -> int:
    from vmsnapd.daemon import Daemon

    path = Path(args.config)
    return Daemon(path, load_config(path)).run()


def cmd_check(args: argparse.Namespace) -> int:
    from vmsnapd.actions.status import check

    code, line = check(_build_context(args))
    print(line)
    return code



COMMANDS = {
    "once": cmd_once,
    "snapshot": cmd_snapshot,
    "config check": cmd_config_check,
    "import-sanoid": cmd_import_sanoid,
    "list": cmd_list,
    "recover": cmd_recover,
    "status": cmd_status,
    "check": cmd_check,
    "run": cmd_run,
    "restore": cmd_restore,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING)
    name = args.command if args.command != "config" else f"config {args.config_command}"
    try:
        return COMMANDS[name](args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EX_CONFIG
    except InvalidName as exc:
        print(f"vmsnapd: {exc}", file=sys.stderr)
        return EX_USAGE
    except OSError as exc:  # e.g. an unwritable state_dir: a message, not a traceback
        print(f"vmsnapd: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EX_FAILED
    except (LockBusy, ZfsError, HypervisorError) as exc:
        print(f"vmsnapd: {exc}", file=sys.stderr)
        return EX_FAILED
