"""What every action needs, built once by the CLI or the daemon and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from vmsnapd.config import Config, DatasetPolicy, config_roots, resolve
from vmsnapd.hvtypes import HypervisorUnavailable
from vmsnapd.journal import Journal
from vmsnapd.ports import HypervisorPort, RamStorePort, ZfsPort
from vmsnapd.ramstore import RamStore
from vmsnapd.runner import Runner
from vmsnapd.zfs import ZfsListing


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Context:
    config: Config
    config_path: Path
    runner: Runner
    zfs: ZfsPort
    dry_run: bool = False
    now: Callable[[], datetime] = utc_now
    _hypervisor: HypervisorPort | None = None  # given (a fake in tests) or made on first use
    # Further connections (vmsnapd.connections), for VM cycles side by side: given (fakes in tests), else a new
    # adapter like the first; a given `_hypervisor` without it is shared.
    _open_hypervisor: Callable[[], HypervisorPort] | None = None

    def __post_init__(self) -> None:
        self._given = self._hypervisor is not None  # a test's fake

    @property
    def state_dir(self) -> Path:
        return Path(self.config.daemon.state_dir)

    @property
    def hypervisor(self) -> HypervisorPort:
        """Connected on first use: a host with only `domain = "none"` datasets never needs libvirtd, and only
        a context that talks to a hypervisor imports libvirt (the adapter is imported here, not at the top)."""
        if self._hypervisor is None:
            self._hypervisor = self._new_hypervisor()
        return self._hypervisor

    def open_hypervisor(self) -> HypervisorPort:
        """Another connection to the same hypervisor (not `hypervisor`'s: the caller closes it)."""
        if self._open_hypervisor is not None:
            return self._open_hypervisor()
        if self._given:
            return self.hypervisor  # a test's fake: one host, one object
        hypervisor = self._new_hypervisor()
        hypervisor.connect()  # now, not on the cycle's first call: a refused connection is the pool's to handle
        return hypervisor

    def _new_hypervisor(self) -> HypervisorPort:
        try:
            from vmsnapd.hypervisor import Hypervisor
        except ImportError as exc:  # the same answer as a libvirtd that does not answer: every caller handles it
            raise HypervisorUnavailable(f"libvirt-python cannot be imported ({exc})") from exc
        return Hypervisor(self.config.daemon.libvirt_uri, dry_run=self.dry_run, runner=self.runner)

    def close(self) -> None:
        """Close the hypervisor's connection if one was opened (the daemon does after every pass)."""
        if self._hypervisor is not None:
            self._hypervisor.close()

    @property
    def journal(self) -> Journal:
        return Journal(self.state_dir)

    @property
    def ram_store(self) -> RamStorePort:
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
