"""What the hypervisor adapter answers in: a domain's state and typed errors. No libvirt here.

`vmsnapd.hypervisor` (the libvirt adapter) maps libvirt's state codes and error codes onto these, so the
orchestration, the planners and in-memory fakes speak the same words without importing libvirt.
"""

from __future__ import annotations

from enum import StrEnum


class DomainState(StrEnum):
    """A domain's state as vmsnapd needs it (libvirt's eight states folded into four)."""

    RUNNING = "running"  # running or blocked: the guest executes
    PAUSED = "paused"  # paused or PM-suspended: the guest stands still, its RAM is live
    SHUTOFF = "shutoff"  # defined, not running
    OTHER = "other"  # shutting down, crashed, no state: nothing vmsnapd acts on


RUNNING = DomainState.RUNNING
PAUSED = DomainState.PAUSED
SHUTOFF = DomainState.SHUTOFF
OTHER = DomainState.OTHER


class HypervisorError(Exception):
    """A hypervisor verb failed; the message names the verb and the domain."""


class DomainNotFound(HypervisorError):
    """No domain of that name (never defined, or undefined meanwhile)."""


class HypervisorUnavailable(HypervisorError):
    """libvirtd does not answer (not running, restarting)."""


class NoSpace(HypervisorError):
    """A file libvirt was writing (a RAM file, an overlay) found its file system full; libvirt undid the call."""


class OverlayPathTaken(HypervisorError):
    """Something appeared where a cycle's overlay goes after the cycle checked the path was free: not the cycle's
    file, never overwritten, never deleted by its clean-up."""


class RamAlreadyCaptured(HypervisorError):
    """QEMU takes no RAM capture of a guest that has stayed paused since the last one (its "postmigrate" state
    lasts until the guest runs again); libvirt made nothing of the call."""


class AgentUnavailable(HypervisorError):
    """The guest agent does not answer: no agent channel, agent not running, or it timed out."""


class BlockJobFailed(HypervisorError):
    """A block job (live commit and pivot, or an offline `qemu-img commit`) failed or did not finish."""
