"""The first-pass prune guard's memory: `state_dir/prune-guard.json` (docs/pruning.md, "A safe first pass").

Below the actions: `prune` asks it, `check` reads what it holds back. The rule itself is the pure
`policy.prune_guard_holds`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from vmsnapd.config import DatasetPolicy
from vmsnapd.files import write_file_atomically
from vmsnapd.names import parse_snapname
from vmsnapd.models import Snapshot
from vmsnapd.policy import prune_guard_holds, retention_hash

log = logging.getLogger(__name__)

GUARD_FILE = "prune-guard.json"


class PruneGuard:
    """The first-pass guard (docs/pruning.md): remembers, per dataset, the retention policy last confirmed
    (`state_dir/prune-guard.json`, written atomically). A dataset whose policy is not the confirmed one and
    would lose more than half of its snapshots is held back — logged once with the list at WARNING — until
    `vmsnapd once --prune --confirm`. Any other pass confirms the policy it pruned with.

    `active`: hold back (the daemon, with `[daemon] prune_guard = true`); `confirm`: never hold back and record
    every dataset's policy as confirmed (`once --confirm`). Nothing is written in dry run.
    """

    def __init__(self, state_dir: Path, *, active: bool, confirm: bool = False, dry_run: bool = False):
        self.path = Path(state_dir) / GUARD_FILE
        self.active, self.confirm, self.dry_run = active, confirm, dry_run
        self.changed = False
        self.data: dict[str, dict[str, str]] = {"confirmed": {}, "announced": {}}
        try:
            loaded = json.loads(self.path.read_text())
            self.data.update({k: dict(loaded.get(k, {})) for k in self.data})
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError, TypeError) as exc:  # unreadable: nothing counts as confirmed
            log.warning("cannot read %s (%s): every dataset's policy counts as not yet confirmed", self.path, exc)

    def admits(self, policy: DatasetPolicy, snapshots: list[Snapshot], doomed: list[Snapshot]) -> bool:
        name, digest = policy.name, retention_hash(policy)
        ours = sum(1 for s in snapshots if parse_snapname(s.name) is not None)
        if self.active and not self.confirm and prune_guard_holds(len(doomed), ours, digest,
                                                                  self.data["confirmed"].get(name)):
            if self.data["announced"].get(name) != digest:
                log.warning("prune guard: the policy of %s is new or changed and would destroy %d of its %d "
                            "snapshots; not pruning it until `vmsnapd once --prune --confirm` (or [daemon] "
                            "prune_guard = false). It would destroy: %s", name, len(doomed), ours,
                            ", ".join(s.name for s in doomed))
                self._set("announced", name, digest)
            else:
                log.info("prune guard: %s still held back (%d of %d snapshots would go)", name, len(doomed), ours)
            return False
        if self.data["confirmed"].get(name) != digest:
            self._set("confirmed", name, digest)
        return True

    def _set(self, kind: str, name: str, digest: str) -> None:
        self.data[kind][name] = digest
        self.changed = True

    def save(self) -> None:
        if not self.changed or self.dry_run:
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_file_atomically(self.path, json.dumps(self.data, indent=1, sort_keys=True).encode())
        self.changed = False
