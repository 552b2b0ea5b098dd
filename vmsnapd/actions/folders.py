"""The host-aware check of the folders vmsnapd writes (overlay_dir, ram_dir, state_dir, ram_staging_dir).

Used by `config check` (exit 78 with the reasons) and at the start of every pass and `recover`, before
anything is touched: a config edited after the daemon started, or a host that changed under a good config
(a storage pool defined in overlay_dir, a VM disk copied into it), is refused at run time too. The rules
themselves are pure (vmsnapd.ownership.host_folder_problems); this module only gathers the facts.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from vmsnapd.actions.context import Context, Survey
from vmsnapd.hvtypes import HypervisorError
from vmsnapd.ownership import HostFolders, host_folder_problems
from vmsnapd.targets import dataset_of_path

log = logging.getLogger(__name__)


@dataclass
class FolderCheck:
    problems: list[str] = field(default_factory=list)  # the folders are unsafe: nothing may run
    notes: list[str] = field(default_factory=list)  # parts that could not be checked (said, not fatal)
    # Every defined domain -> the (target, file) its definitions name, as libvirt gave them (None: libvirt could
    # not be asked). Read once per pass: `recover` goes on from this reading instead of asking again.
    domain_disks: dict[str, list[tuple[str, str]]] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def check_folders(ctx: Context, survey: Survey | None) -> FolderCheck:
    """Gather what the rules need (zfs listing, libvirt's domains and pools) and apply them."""
    daemon = ctx.config.daemon
    result = FolderCheck()
    folders = {}
    for key, folder in daemon.folders().items():
        try:
            folders[key] = os.path.realpath(folder)
        except (OSError, ValueError) as exc:  # a NUL byte, a symlink loop: a reason, not a traceback
            result.problems.append(f"daemon.{key} = {folder!r}: unusable path ({exc})")
    if result.problems:
        return result
    mountpoints: dict[str, str] = {}
    holders: dict[str, str | None] = {}
    if survey is None:
        result.notes.append("managed datasets could not be listed: folders not checked against their mountpoints")
    else:
        listing = survey.listing
        mountpoints = {name: listing.datasets[name].mountpoint for name in survey.policies
                       if name in listing.datasets and listing.datasets[name].mountpoint}
        for key, folder in folders.items():
            holder = dataset_of_path(folder, listing)
            holders[key] = holder if holder in survey.policies else None
    disks: dict[str, list[tuple[str, str]]] = {}
    pools: dict[str, str] = {}
    try:
        result.domain_disks = ctx.hypervisor.all_domain_disks()
        disks = {name: [(target, os.path.realpath(path)) for target, path in files]
                 for name, files in result.domain_disks.items()}
        pools = {name: os.path.realpath(path) if path else "" for name, path in
                 ctx.hypervisor.storage_pool_paths().items()}
    except HypervisorError as exc:
        result.notes.append(f"libvirt could not be asked ({exc}): folders not checked against domains' disks "
                            "and storage pools")
    result.problems += host_folder_problems(HostFolders(folders=folders, managed_mountpoints=mountpoints,
                                                       folder_datasets=holders, domain_disks=disks,
                                                       pool_paths=pools))
    if daemon.ram_dataset:
        from vmsnapd.ramdataset import ram_dataset_notes

        result.notes += ram_dataset_notes(ctx.zfs, daemon.ram_dataset)
    compressor = ctx.ram_store.compression_problem(daemon.ram_compression)
    if compressor is not None:
        result.notes.append(f"{compressor}: every cycle of a running VM takes a disk-only snapshot "
                            "(on_memory_failure) until it is")
    # A host whose datasets all say domain = "none" need not run libvirtd: no need to shout about it then.
    loud = survey is None or any(p.domain != "none" for p in survey.policies.values())
    for note in result.notes:
        log.log(logging.WARNING if loud else logging.INFO, "folder check: %s", note)
    return result
