"""Run vmsnapd's CLI for the oracle; with ORACLE_WRONG_RULE=newest-n, under a deliberately wrong retention
rule (the newest N by creation, vmsnapd's old rule), so a test can prove the oracle catches a wrong rule."""

from __future__ import annotations

import os
import sys


def newest_n(policy, snapshots, now):
    from vmsnapd.names import PERIODS
    from vmsnapd.policy import ours_of_period, retention

    doomed = []
    for period in PERIODS:
        doomed += [s for s in ours_of_period(policy, list(snapshots), period)[retention(policy, period):] if not s.userrefs]
    return sorted(doomed, key=lambda s: (s.creation, s.name))


def main() -> int:
    if os.environ.get("ORACLE_WRONG_RULE") == "newest-n":
        import vmsnapd.actions.prune as prune

        prune.prune_set = newest_n
    from vmsnapd.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
