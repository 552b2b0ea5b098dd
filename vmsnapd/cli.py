"""Command line front: parses, loads the config, calls one action, renders for humans or JSON."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from vmsnapd import __version__
from vmsnapd.actions.context import Context, Survey
from vmsnapd.actions.folders import check_folders
from vmsnapd.report import PassReport, TargetOutcome
from vmsnapd.config import (ConfigError, DaemonSettings, group_members, load_config, read_regular_file, resolve,
                            table_policy)
from vmsnapd.files import check_folder_to_be
from vmsnapd.groupplan import group_report
from vmsnapd.lock import LockBusy, daemon_lock, pass_lock
from vmsnapd.logsetup import NOTICE, setup_logging
from vmsnapd.progress import progress_on_tty
from vmsnapd.names import InvalidName
from vmsnapd.runner import Runner
from vmsnapd.hvtypes import HypervisorError
from vmsnapd.zfs import Zfs, ZfsError

if TYPE_CHECKING:  # imported when a command needs it, for a quick start
    from vmsnapd.actions.status import DatasetStatus

DEFAULT_CONFIG = "/etc/vmsnapd/vmsnapd.toml"
EX_OK = 0
EX_FAILED = 1
EX_USAGE = 2
EX_PLAN_ONLY = 10  # a plan was shown and nothing was done (restore without --yes)
EX_CONFIG = 78
EX_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away
EXIT_CODES_HELP = f"""exit status:
  {EX_OK}   done, all good (check: OK)
  {EX_FAILED}   something failed (check: WARNING)
  {EX_USAGE}   usage error (check: CRITICAL)
  3   check: UNKNOWN
  {EX_PLAN_ONLY}  plan shown, nothing done (restore without --yes)
  {EX_CONFIG}  invalid configuration (EX_CONFIG); nothing on the host touched
  {EX_BROKEN_PIPE} stdout closed early (e.g. piped into head); quiet
  130 interrupted (Ctrl-C)"""
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


def _global_options(parser: argparse.ArgumentParser, top: bool, short_config: bool = True) -> None:
    """The global options, on the top parser (with defaults) and on every subcommand (defaults SUPPRESSed, so a
    value given after the subcommand wins and one given before it is not reset): `vmsnapd once -c F` works."""
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("global options (also accepted after the command)")
    # `check` keeps -c for its CRITICAL threshold (Nagios' -w/-c): there only --config names the policy file.
    group.add_argument(*(("-c", "--config") if short_config else ("--config",)), default=default(DEFAULT_CONFIG),
                       metavar="PATH",
                       help=f"policy file (default {DEFAULT_CONFIG})")
    group.add_argument("-v", "--verbose", action="store_true", default=default(False),
                       help="log INFO lines too (each step, hook output, a pass with nothing due)")
    group.add_argument("--debug", action="store_true", default=default(False),
                       help="log DEBUG lines, including every command's argv")
    group.add_argument("--lock-wait", type=_seconds, default=default(LOCK_WAIT_S), metavar="SECONDS",
                       help=f"how long to wait for another pass to finish before giving up with exit 1 "
                            f"(default {LOCK_WAIT_S:.0f})")


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _override(text: str) -> tuple[str, int | str]:
    from vmsnapd.monitoring import parse_override

    try:
        return parse_override(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmsnapd",
        description="Consistent snapshots of running libvirt VMs on ZFS, with sanoid-compatible names and retention.",
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vmsnapd {__version__}")
    _global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, parent=sub, short_config: bool = True) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_text, description=help_text)
        _global_options(p, top=False, short_config=short_config)
        return p

    command("run", "the daemon, in the foreground (systemd Type=notify)")
    p = command("once", "one pass like sanoid --cron: take what is due, then prune")
    p.add_argument("--take", action="store_true", help="only take snapshots that are due")
    p.add_argument("--prune", action="store_true", help="only prune")
    p.add_argument("--dry-run", action="store_true", help="say what would be done, change nothing")
    p.add_argument("--force", action="store_true",
                   help="also delete RAM dumps that have no manifest (half-written or foreign-looking) when orphaned")
    p.add_argument("--confirm", action="store_true",
                   help="prune what the daemon's prune guard holds back and record each dataset's policy as "
                        "confirmed (docs/pruning.md)")
    _json_option(p)
    p = command("snapshot", "take a cycle now for a dataset or a domain")
    p.add_argument("target", metavar="TARGET", help="a managed dataset, or the libvirt domain of one")
    p.add_argument("--period", default="hourly", metavar="PERIOD",
                   help="period in the snapshot name, counted by its retention (default hourly)")
    p.add_argument("--dry-run", action="store_true", help="say what would be done, change nothing")
    _json_option(p)
    p = command("status", "per dataset: domain, state, newest snapshots, RAM dumps, errors")
    _json_option(p)
    p = command("check", "monitoring, Nagios style (exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)", short_config=False)
    p.add_argument("-w", "--warning", action="append", default=[], type=_override, metavar="PERIOD=AGE",
                   help="WARNING threshold for every dataset, e.g. hourly=2h (sanoid's syntax; 0: off) or "
                        "capacity=85; repeatable; wins over the policy's <period>_warn")
    p.add_argument("-c", "--critical", action="append", default=[], type=_override, metavar="PERIOD=AGE",
                   help="CRITICAL threshold, as -w (the policy's <period>_crit); the policy file: --config")
    p.add_argument("--json", action="store_true", help="the verdict, findings and performance data as JSON")
    p = command("config", "configuration commands")
    csub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    p = command("check", "validate and print the resolved policy per dataset", parent=csub)
    _json_option(p)
    p = command("import-sanoid", "print the TOML equivalent of a sanoid.conf")
    p.add_argument("file", metavar="FILE", help="the sanoid.conf to translate")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write the TOML to FILE (atomically, mode 0644) instead of standard output; "
                        "nothing is written when the import fails")
    p = command("list", "restore points: snapshots, time, whether a RAM dump exists")
    p.add_argument("target", metavar="TARGET", nargs="?", help="a dataset or domain (default: all)")
    _json_option(p)
    p = command("restore", "verify, set the current state aside, restore (or clone), resume from RAM; "
                           "without --yes only the plan")
    p.add_argument("target", metavar="TARGET", help="a managed dataset, or the libvirt domain of one")
    p.add_argument("snapshot", metavar="SNAPSHOT", nargs="?", help="the snapshot name (the part after @)")
    p.add_argument("--undo", action="store_true",
                   help="put back the state the last in-place restore of TARGET set aside (no SNAPSHOT)")
    p.add_argument("--drop-aside", action="store_true",
                   help="destroy the state the last in-place restore of TARGET set aside (no SNAPSHOT)")
    p.add_argument("--clone", metavar="NAME", help="restore into a new VM NAME on clones, leaving the original alone")
    p.add_argument("--group", action="store_true",
                   help="TARGET is a VM group (or a member of one): restore every member to SNAPSHOT together")
    p.add_argument("--no-memory", action="store_true", help="boot from the disks, ignoring the RAM dump")
    p.add_argument("--force-stop", action="store_true", help="power the VM off if it does not shut down when asked")
    p.add_argument("--yes", action="store_true",
                   help=f"carry the plan out (without it: the plan is shown, nothing done, exit {EX_PLAN_ONLY})")
    _json_option(p)
    p = command("recover", "finish or undo any cycle a crash interrupted")
    _json_option(p)
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
    from vmsnapd.pruneguard import PruneGuard

    ctx = _build_context(args, dry_run=args.dry_run)
    guard = PruneGuard(ctx.state_dir, active=False, confirm=True, dry_run=args.dry_run) if args.confirm else None
    with pass_lock(ctx.state_dir, wait_s=args.lock_wait), progress_on_tty(ctx.config.daemon.libvirt_uri,
                                                                         _likely_domains(ctx)):
        report = run_pass(ctx, take=args.take or not args.prune, prune_too=args.prune or not args.take,
                          force_dumps=args.force, guard=guard)
    _write_textfile(ctx, report)
    if args.json:
        _print_json({**report.model_dump(mode="json"), "failed": report.failed})
    else:
        _render_outcomes(report)
    return EX_FAILED if report.failed else EX_OK


def _likely_domains(ctx: Context) -> set[str]:
    """Domains a pass may touch, for the progress line: configured ones, and the last component of each
    configured dataset (domain = "auto"). Cheap; a domain missed here only shows no progress."""
    names = set()
    for dataset, table in ctx.config.datasets.items():
        domain = getattr(table, "domain", None)
        names.add(dataset.rsplit("/", 1)[-1] if domain in (None, "auto") else domain)
    return names - {"none"}


def _write_textfile(ctx: Context, report: PassReport) -> None:
    """`metrics_textfile`: this run's metrics for node_exporter, written atomically; never in a dry run.
    A failure to write it is logged, it does not fail the pass."""
    import time

    from vmsnapd.actions.status import host_status
    from vmsnapd.metrics import Metrics

    path = ctx.config.daemon.metrics_textfile
    if not path or ctx.dry_run:
        return
    metrics = Metrics(process=False)
    metrics.observe_report(report, time.time())
    try:
        metrics.set_status(host_status(ctx))
    except (ZfsError, HypervisorError, OSError) as exc:
        log.warning("metrics textfile: could not survey the host (%s); writing the pass's counters only", exc)
    try:
        metrics.write_textfile(Path(path))
    except OSError as exc:
        log.error("metrics textfile %s not written: %s", path, exc.strerror or exc)


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


def cmd_snapshot(args: argparse.Namespace) -> int:
    from vmsnapd.actions.status import record_results
    from vmsnapd.actions.take import take_now
    from vmsnapd.names import PERIODS

    if args.period not in PERIODS:
        print(f"vmsnapd: --period must be one of {', '.join(PERIODS)}", file=sys.stderr)
        return EX_USAGE
    ctx = _build_context(args, dry_run=args.dry_run)
    with pass_lock(ctx.state_dir, wait_s=args.lock_wait), progress_on_tty(ctx.config.daemon.libvirt_uri,
                                                                         [args.target, *_likely_domains(ctx)]):
        outcomes = take_now(ctx, ctx.survey(), args.target, args.period)
        recorded = PassReport(outcomes=outcomes or [])
        if outcomes is not None:
            record_results(ctx, recorded)  # a results file it cannot write: logged, and exit 1 below
    if outcomes is None:
        print(f"vmsnapd: {args.target} is neither a dataset managed by {args.config} nor the domain of one",
              file=sys.stderr)
        return EX_FAILED
    if args.json:  # one document; a VM group's members (docs/groups.md): a list of them
        _print_json([o.model_dump(mode="json") for o in outcomes] if len(outcomes) > 1
                    else outcomes[0].model_dump(mode="json"))
    else:
        for outcome in outcomes:
            print(_outcome_line(outcome))
    return EX_OK if not recorded.failed else EX_FAILED


def cmd_config_check(args: argparse.Namespace) -> int:
    ctx = _build_context(args)
    config = ctx.config
    survey = None
    try:
        listing = ctx.zfs.list_tree(ctx.config_roots())
        where = "datasets that exist now"
        policies = resolve(config, sorted(listing.datasets))
        survey = Survey(listing=listing, policies=policies)
    except ZfsError as exc:
        where = f"configured names only (cannot list datasets: {exc})"
        policies = resolve(config, sorted(config.datasets))
    folders = check_folders(ctx, survey)  # the host-aware folder rules: a reason per unsafe folder, exit 78
    unsafe = _unsafe_folders(config.daemon)  # what every pass would refuse to write in (vmsnapd.files)
    if not folders.ok or unsafe:
        raise ConfigError(args.config, folders.problems + unsafe)
    for note in folders.notes:  # on stderr: stdout stays the policy (or the JSON document)
        print(f"vmsnapd: note: {note}", file=sys.stderr)
    if not config.datasets:  # valid, but it manages nothing: say so (an import that produced nothing, a typo)
        print(f"vmsnapd: warning: {args.config} has no [datasets.\"…\"] table: it manages no dataset",
              file=sys.stderr)
    groups = {group: [(table, table_policy(config, table).method) for table in tables]
              for group, tables in group_members(config).items()}
    if args.json:
        _print_json({"config": args.config, "valid": True, "source": where,
                     "datasets": {name: p.model_dump(mode="json", exclude={"name"}) for name, p in policies.items()},
                     "groups": {group: [table for table, _ in members] for group, members in groups.items()},
                     "ram_staging": _staging_note(config.daemon)})
        return EX_OK
    print(f"{args.config}: valid. Resolved policy for {len(policies)} dataset(s) ({where}):")
    for name, policy in policies.items():
        data = policy.model_dump(exclude={"name"})
        print(f"\n[{name}]")
        for key, value in data.items():
            print(f"  {key} = {json.dumps(value, default=str)}")
    _print_host_notes(groups, _staging_note(config.daemon))
    return EX_OK


def _unsafe_folders(daemon: DaemonSettings) -> list[str]:
    """The folders vmsnapd writes that every pass would refuse (vmsnapd.files: a symbolic link, someone else's,
    writable by others, a file): said by `config check` before the daemon starts, not at its first pass. The
    staging folder is left out: an unsafe one is not fatal, the RAM file goes to overlay_dir with a warning."""
    problems = []
    for key in ("state_dir", "overlay_dir", "ram_dir"):
        if key == "ram_dir" and daemon.ram_dataset:
            continue
        try:
            check_folder_to_be(getattr(daemon, key))
        except (OSError, ValueError) as exc:
            problems.append(f"daemon.{key}: {exc}")
    return problems


def _print_host_notes(groups: dict, staging: str) -> None:
    """The end of `config check`'s text: the VM groups, and how big a guest the RAM staging folder takes."""
    if groups:
        print("\nVM groups (docs/groups.md):")
        for line in group_report(groups):
            print(f"  {line}")
    if staging:
        print(f"\nRAM staging (docs/how-it-works.md): {staging}")


def _staging_note(daemon: DaemonSettings) -> str:
    """How big a guest the RAM staging folder takes on this host now (docs/how-it-works.md, "RAM staging");
    empty: no staging folder."""
    if not daemon.ram_staging_dir:
        return ""
    from vmsnapd.staging import host_facts, staging_note

    folder = Path(daemon.ram_staging_dir)
    try:
        return staging_note(folder, host_facts(folder))
    except OSError as exc:
        return f"ram_staging_dir {folder} cannot be looked at ({exc}): RAM files go to overlay_dir"


def _hook_script_text(program: str) -> str:
    """What a sanoid hook runs, as text (found on PATH as sanoid's shell would when it names no folder)."""
    import shutil

    path = program if "/" in program else shutil.which(program) or program
    data, _info = read_regular_file(path)
    return data.decode("utf-8", "replace")


def cmd_import_sanoid(args: argparse.Namespace) -> int:
    from vmsnapd.files import write_file_atomically
    from vmsnapd.sanoid_import import SanoidImportError, sanoid_import

    data, _info = read_regular_file(args.file)  # a FIFO or a device is refused, not waited on
    try:
        text = data.decode("utf-8")
        result = sanoid_import(text, read_script=_hook_script_text)
    except UnicodeDecodeError as exc:
        print(f"vmsnapd: {args.file}: cannot import: not UTF-8 text ({exc.reason} at byte {exc.start}); "
              "nothing written", file=sys.stderr)
        return EX_CONFIG
    except SanoidImportError as exc:  # an invalid input config: exit 78 as for every config
        print(f"vmsnapd: {args.file}: cannot import: {exc}; nothing written", file=sys.stderr)
        return EX_CONFIG
    for warning in result.warnings:
        print(f"vmsnapd: warning: {warning}", file=sys.stderr)
    if args.output:
        # all or nothing, never through a link; 0644: the loader refuses a policy others may write
        write_file_atomically(Path(args.output), result.toml.encode(), 0o644)
    else:
        sys.stdout.write(result.toml)
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
    if args.json:
        _print_json({**report.model_dump(mode="json"), "failed": report.failed})
        return EX_FAILED if report.failed else EX_OK
    for line in report.actions:
        print(line)
    for line in report.warnings:
        print(f"WARNING {line}")
    for line in report.errors:
        print(f"ERROR {line}")
    if not report.actions and not report.errors and not report.warnings:
        print("nothing to recover")
    return EX_FAILED if report.failed else EX_OK


def _print_dataset_status(entry: DatasetStatus, now: datetime) -> None:
    from vmsnapd.actions.status import format_age
    from vmsnapd.backing import outside_warnings

    vm = f"{entry.domain} ({entry.vm_state})" if entry.domain else "no VM"
    print(f"{entry.dataset}  [{vm}]")
    for period, ps in entry.periods.items():
        newest = f"{ps.newest} ({format_age(now - ps.newest_at)} ago)" if ps.newest else "none"
        due = "due now" if ps.due_now else (f"next {ps.next_due:%Y-%m-%d %H:%M}" if ps.next_due else "not taken")
        print(f"  {period:<10} {ps.count:>3}/{ps.kept:<3} newest {newest}; {due}")
    print(f"  RAM dumps: {entry.ram_dumps}, {entry.ram_bytes / 2**20:.1f} MiB")
    if entry.replication_lag_s is not None:  # a received dataset (autosnap = false)
        lag = "nothing received" if entry.replication_lag_s < 0 else format_age(
            timedelta(seconds=entry.replication_lag_s))
        print(f"  replication lag: {lag}")
    for overlay in entry.overlays:
        print(f"  ON OVERLAY: {overlay}  (run `vmsnapd recover`)")
    for overlay in entry.others_overlays:
        print(f"  on an overlay vmsnapd did not make: {overlay}  (left alone; merge it: "
              f"`{overlay.merge_hint(entry.domain or '?')}`)")
    for warning in outside_warnings(entry.domain or "?", entry.outside_backing) + entry.backing_unknown:
        print(f"  WARNING: {warning}")
    for last in (entry.last_take, entry.last_prune):
        if last and not last.ok:
            print(f"  last {last.action} FAILED at {last.at:%Y-%m-%d %H:%M:%S}: {last.error}")


def cmd_status(args: argparse.Namespace) -> int:
    from vmsnapd.actions.status import host_status

    ctx = _build_context(args)
    status = host_status(ctx)
    if args.json:
        print(status.model_dump_json(indent=2))
        return EX_OK
    now = ctx.now()
    for entry in status.datasets:
        _print_dataset_status(entry, now)
    for pool, cap in status.pools.items():
        print(f"pool {pool}: {cap}% used")
    for path in status.leftover_files:
        print(f"leftover: {path}")
    sys.stdout.write("".join(f"kept aside by a restore: {line}\n" for line in status.kept_aside))
    for line in status.journal_unreadable + status.interrupted_cycles:
        print(f"journal: {line}")
    sys.stdout.write("".join(f"PASS REFUSED: {line}\n" for line in status.passes_refused))
    for problem in status.problems:
        print(f"problem: {problem}")
    return EX_OK


def cmd_restore(args: argparse.Namespace) -> int:
    """Plan (verify), show the plan, and only with --yes carry it out. With --json one document at the end:
    `plan`, `carried_out`, and `done` (the steps done) or `error`."""
    from vmsnapd.actions.restore import RestoreFailed, execute_restore, plan_restore

    if args.group:
        return _cmd_restore_group(args)
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
        result: dict[str, object] = {"plan": plan.model_dump(mode="json"), "carried_out": False}
        if not args.json:
            _print_plan(plan)
        code = _carry_out(args, ctx, result, [plan.domain, plan.clone], lambda: execute_restore(ctx, plan))
    _print_done(args, result)
    return code


def _carry_out(args: argparse.Namespace, ctx: Context, result: dict[str, object], domains: list[str | None],
               execute: Callable[[], list[str]]) -> int:
    """After the plan of a restore was shown: nothing more without --yes; else carry it out (the progress of
    `domains` on a terminal) into `result`. The exit code."""
    from vmsnapd.actions.restore import RestoreFailed

    if not args.yes:
        print(f"nothing done: add --yes to carry this out (exit {EX_PLAN_ONLY})", file=sys.stderr)
        return EX_PLAN_ONLY
    try:
        with progress_on_tty(ctx.config.daemon.libvirt_uri, domains):
            result["done"] = execute()
    except RestoreFailed as exc:
        print(f"vmsnapd: restore FAILED: {exc}", file=sys.stderr)
        result["error"] = str(exc)
        return EX_FAILED
    result["carried_out"] = True
    return EX_OK


def _print_done(args: argparse.Namespace, result: dict[str, object]) -> None:
    if args.json:
        _print_json(result)
    else:
        for line in result.get("done", []):
            print(f"done: {line}")


def _print_plan(plan) -> None:
    print(f"restore of {plan.domain} to {plan.snapshot}:")
    for step in plan.steps:
        print(f"  - {step}")
    for line in plan.verified:
        print(f"  verified: {line}")
    for name in plan.newer_snapshots_kept_aside:
        print(f"    kept aside (newer): {name}")
    for note in plan.notes:
        print(f"  note: {note}")
    for warning in plan.warnings:
        print(f"  {warning if warning.startswith('WARNING') else 'WARNING: ' + warning}")


def _cmd_restore_group(args: argparse.Namespace) -> int:
    """`restore --group TARGET SNAPSHOT`: every member of a VM group, verified first, restored together."""
    from vmsnapd.actions.group_restore import execute_group_restore, plan_group_restore
    from vmsnapd.actions.restore import RestoreFailed

    refused = ("--undo and --drop-aside work per member: name the member, without --group"
               if args.undo or args.drop_aside else
               "restore --group does not take --clone (clone the members one by one)" if args.clone else
               "restore --group needs SNAPSHOT" if args.snapshot is None else None)
    if refused:
        print(f"vmsnapd: {refused}", file=sys.stderr)
        return EX_USAGE
    ctx = _build_context(args)
    with pass_lock(ctx.state_dir, wait_s=args.lock_wait):
        try:
            gplan = plan_group_restore(ctx, args.target, args.snapshot, no_memory=args.no_memory,
                                       force_stop=args.force_stop)
        except RestoreFailed as exc:
            print(f"vmsnapd: restore refused: {exc}", file=sys.stderr)
            return EX_FAILED
        result: dict[str, object] = {"plan": gplan.model_dump(mode="json"), "carried_out": False}
        if not args.json:
            print(f"restore of group {gplan.group} ({', '.join(gplan.domains)}) to {gplan.snapshot}, every member "
                  "verified first:")
            for plan in gplan.plans:
                _print_plan(plan)
        code = _carry_out(args, ctx, result, list(gplan.domains), lambda: execute_group_restore(ctx, gplan))
    _print_done(args, result)
    return code


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
            print(f"nothing done: add --yes to carry this out (exit {EX_PLAN_ONLY})", file=sys.stderr)
            return EX_PLAN_ONLY
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
    config = load_config(path)
    with daemon_lock(Path(config.daemon.state_dir)):  # one daemon per state_dir; DaemonRunning: exit 1
        return Daemon(path, config).run()


def cmd_check(args: argparse.Namespace) -> int:
    from vmsnapd.actions.status import check
    from vmsnapd.monitoring import Overrides

    result = check(_build_context(args), Overrides(warn=dict(args.warning), crit=dict(args.critical)))
    print(result.model_dump_json(indent=2) if args.json else result.nagios())
    return int(result.state)



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
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:
        print("vmsnapd: interrupted", file=sys.stderr)
        return 130
    return code


def _closed_pipe() -> int:
    """The reader of stdout went away (`vmsnapd status | head -1`): stop quietly, like a tool killed by SIGPIPE.
    stdout is pointed at /dev/null so the interpreter's final flush cannot complain either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EX_BROKEN_PIPE


def _log_level(args: argparse.Namespace) -> int:
    """--debug, -v, else NOTICE for the daemon (start, stop, reload, what a pass did) and WARNING for commands
    (whose results go to stdout)."""
    if args.debug:
        return logging.DEBUG
    if args.verbose:
        return logging.INFO
    return NOTICE if args.command == "run" else logging.WARNING


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(_log_level(args))
    name = args.command if args.command != "config" else f"config {args.config_command}"
    try:
        return COMMANDS[name](args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EX_CONFIG
    except InvalidName as exc:
        print(f"vmsnapd: {exc}", file=sys.stderr)
        return EX_USAGE
    except BrokenPipeError:
        raise
    except OSError as exc:  # e.g. an unwritable state_dir: a message, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"vmsnapd: {where}{exc.strerror or exc}", file=sys.stderr)
        return EX_FAILED
    except (LockBusy, ZfsError, HypervisorError) as exc:
        print(f"vmsnapd: {exc}", file=sys.stderr)
        return EX_FAILED
