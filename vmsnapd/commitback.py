"""Bringing a disk back from one of vmsnapd's overlays: the one commit-back the cycle and `recover` share.

The domain's state decides how (vmsnapd.cycleplan.commit_way): running or paused → live blockcommit + pivot;
shut off → offline `qemu-img commit` and the definition pointed back at the base; gone → the overlay file merged
into its base. Which overlays may be committed at all is decided elsewhere (the cycle's own record;
vmsnapd/ownership.py for `recover`).
"""

from __future__ import annotations

from vmsnapd.cycleplan import GONE, CommitWay, commit_way
from vmsnapd.hvtypes import DomainNotFound
from vmsnapd.ports import HypervisorPort as Hypervisor


def state_or_gone(hv: Hypervisor, domain: str) -> str:
    """The domain's state, or GONE when libvirt no longer knows it (other HypervisorErrors propagate)."""
    try:
        return hv.state(domain)
    except DomainNotFound:
        return GONE


def commit_back(hv: Hypervisor, domain: str, target: str, overlay_path: str,
                vm_state: str) -> tuple[CommitWay, str | None]:
    """Commit `overlay_path` (disk `target` of `domain`, in `vm_state`) back into its base. Returns how, and the
    base file it went into (None for a live commit: libvirt pivots onto the backing file). The overlay file
    stays for the caller to delete. Raises HypervisorError."""
    way = commit_way(vm_state)
    if way == CommitWay.LIVE:
        hv.commit_active(domain, target)
        return way, None
    if way == CommitWay.FILE:
        return way, hv.commit_overlay_file(overlay_path)
    return way, hv.commit_offline(domain, target, overlay_path)
