"""vmsnapd: consistent snapshots of running libvirt VMs on ZFS."""

__version__ = "0.1.0"
