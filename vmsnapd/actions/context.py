"""What every action needs, built once by the CLI or the daemon and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from vmsnapd.config import Config, DatasetPolicy, config_roots, resolve
from vmsnapd.hypervisor import Hypervisor
from vmsnapd.journal import Journal
from vmsnapd.runner import Runner
from vmsnapd.zfs import Zfs, ZfsListing


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Context:
    config: Config
    config_path: Path
    runner: Runner
    zfs: Zfs
    dry_run: bool = False
    now: Callable[[], datetime] = utc_now
    _hypervisor: Hypervisor | None = None

    @property
    def state_dir(self) -> Path:
        return Path(self.config.daemon.state_dir)

    @property
    def hypervisor(self) -> Hypervisor:
        """Connected on first use: a host with only `domain = "none"` datasets never needs libvirtd."""
        if self._hypervisor is None:
            self._hypervisor = Hypervisor(self.config.daemon.libvirt_uri, dry_run=self.dry_run)
        return self._hypervisor

    @property
    def journal(self) -> Journal:
        return Journal(self.state_dir)

    @property
    def ram_store(self):  # -> vmsnapd.ramstore.RamStore
        from vmsnapd.ramstore import RamStore

        if self.config.daemon.ram_dataset:
            from vmsnapd.ramdataset import RamDatasetStore
            from vmsnapd.replica import source_prefixes

            sources = {name: table.source for name, table in self.config.datasets.items()}
            return RamDatasetStore(self.config.daemon.ram_dataset, self.zfs, self.runner, source_prefixes(sources))
        return RamStore(Path(self.config.daemon.ram_dir), runner=self.runner)

    def config_roots(self) -> list[str]:
        """The configured table names with none below another: what one listing call must cover."""
        return config_roots(self.config)

    def survey(self) -> "Survey":
        listing = self.zfs.list_tree(self.config_roots())
        policies = resolve(self.config, sorted(listing.datasets))
        return Survey(listing=listing, policies=policies)


@dataclass
class Survey:
    """One pass's view of the host: the ZFS listing and the policy of every managed dataset."""

    listing: ZfsListing
    policies: dict[str, DatasetPolicy] = field(default_factory=dict)
