#!/bin/bash
# vmsnapd lab set-up (idempotent, as root, Debian 12): packages, venv, zfs-fuse (under libfaketime),
# virtlogd, libvirtd, guest kernel + initrds. Prints what it did. See docs/development.md.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
LAB_DIR="${VMSNAPD_LAB_DIR:-/var/lib/vmsnapd-lab}"
FAKETIME_FILE="$LAB_DIR/faketime"
FAKETIME_LIB=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1
URI=qemu:///system
PACKAGES=(zfs-fuse qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev pkg-config
          busybox-static cpio dnsmasq-base zstd faketime qemu-guest-agent e2fsprogs python3-venv python3-dev gcc xz-utils sanoid
          systemd debootstrap dpkg-dev
          ${VMSNAPD_LAB_EXTRA_PACKAGES:-})  # extra: for testing the error path
t0=$(date +%s.%N)
say() { echo "lab-setup: $*"; }
die() { echo "lab-setup: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (zfs-fuse, libvirt qemu:///system and pool files need root); try: sudo $0"
[ -c /dev/fuse ] || die "/dev/fuse is missing: zfs-fuse needs FUSE (modprobe fuse, or run the container with --device /dev/fuse)"

# 1. Debian packages (only the missing ones; apt-get update only when something is missing)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    for p in "${missing[@]}"; do
        apt-cache show "$p" >/dev/null 2>&1 || die "package '$p' cannot be installed: not known to apt (is Debian main in sources.list?)"
    done
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/vmsnapd-lab-apt.log 2>&1 \
        || die "apt-get install ${missing[*]} failed; see /tmp/vmsnapd-lab-apt.log"
else
    say "packages: all ${#PACKAGES[@]} present"
fi

# 2. Python venv with the package and its test extras
if [ ! -x "$REPO/.venv/bin/python" ]; then
    say "creating venv $REPO/.venv"
    python3 -m venv "$REPO/.venv" || die "python3 -m venv failed (python3-venv missing?)"
fi
stamp="$REPO/.venv/.vmsnapd-lab-installed"
if [ ! -f "$stamp" ] || [ "$REPO/pyproject.toml" -nt "$stamp" ] \
   || ! "$REPO/.venv/bin/python" -c 'import libvirt, vmsnapd, pytest, hypothesis, pydantic, apscheduler' 2>/dev/null; then
    say "pip install -e '.[test]' (log: /tmp/vmsnapd-lab-pip.log)"
    "$REPO/.venv/bin/pip" install -q -e "$REPO[test]" >/tmp/vmsnapd-lab-pip.log 2>&1 \
        || { tail -n 20 /tmp/vmsnapd-lab-pip.log >&2; die "pip install -e '.[test]' failed"; }
    touch "$stamp"
else
    say "venv $REPO/.venv up to date"
fi

# 3. services
mkdir -p "$LAB_DIR/pools" "$LAB_DIR/vms" /var/log/libvirt /var/log/vmsnapd-lab
[ -f "$FAKETIME_FILE" ] || echo "+0" > "$FAKETIME_FILE"
zfs_pid="$(pgrep -x zfs-fuse | head -n1 || true)"
if [ -n "$zfs_pid" ]; then
    if tr '\0' '\n' < "/proc/$zfs_pid/environ" 2>/dev/null | grep -q "^FAKETIME_TIMESTAMP_FILE=$FAKETIME_FILE$"; then
        say "zfs-fuse running (pid $zfs_pid, under libfaketime with $FAKETIME_FILE)"
    elif [ -z "$(zpool list -H -o name 2>/dev/null)" ]; then
        say "zfs-fuse (pid $zfs_pid) runs without libfaketime and no pool is imported: restarting it under libfaketime"
        kill "$zfs_pid"
        for _ in $(seq 100); do kill -0 "$zfs_pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$zfs_pid" 2>/dev/null && die "zfs-fuse pid $zfs_pid did not stop"
        zfs_pid=""
    else
        say "WARNING: zfs-fuse (pid $zfs_pid) runs without libfaketime and pools are imported: leaving it;" \
            "tests that age snapshots will fail (stop it when no pool is in use and re-run)"
    fi
fi
if [ -z "$zfs_pid" ]; then
    say "starting zfs-fuse under libfaketime (log /var/log/vmsnapd-lab/zfs-fuse.log)"
    [ -f "$FAKETIME_LIB" ] || die "$FAKETIME_LIB missing (package faketime)"
    FAKETIME_TIMESTAMP_FILE="$FAKETIME_FILE" FAKETIME_NO_CACHE=1 LD_PRELOAD="$FAKETIME_LIB" \
        setsid zfs-fuse --no-daemon </dev/null >>/var/log/vmsnapd-lab/zfs-fuse.log 2>&1 &
fi
ok=0
for _ in $(seq 300); do
    if zpool list >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.1
done
[ $ok = 1 ] || die "zfs-fuse does not answer 'zpool list' within 30 s (see /var/log/vmsnapd-lab/zfs-fuse.log)"

if ! pgrep -x virtlogd >/dev/null; then
    say "starting virtlogd (log /var/log/vmsnapd-lab/virtlogd.log)"
    setsid virtlogd </dev/null >>/var/log/vmsnapd-lab/virtlogd.log 2>&1 &
else
    say "virtlogd running"
fi
# Without udev, /dev/kvm can be root-only: QEMU's capability probe (as root) then sees KVM while libvirtd's check
# for the qemu user does not, and libvirtd re-probes QEMU on every driver call (seen: `virsh version` 40-60 s under
# load). Give it Debian's udev permissions (group kvm, 0660); the lab's guests still run TCG (<domain type='qemu'>).
if [ -c /dev/kvm ] && getent group kvm >/dev/null && [ "$(stat -c %G:%a /dev/kvm)" != "kvm:660" ]; then
    say "/dev/kvm: group kvm, mode 0660 (as Debian's udev rule sets it)"
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi
# Without systemd as PID 1, "/" is a *private* mount. libvirt gives every guest's QEMU a mount namespace of its
# own (qemu.conf namespaces = ["mount"], a slave of "/"): with "/" private, that namespace keeps a private copy of
# every zfs-fuse mount that existed when the guest started, and no later unmount reaches it, so zfs-fuse refuses
# `zfs destroy`/`zpool destroy` of those datasets as "busy" until that guest exits — usually another test's or
# another session's guest. systemd makes "/" shared on every real host; the lab does the same.
if [ "$(findmnt -no PROPAGATION / 2>/dev/null)" = private ]; then
    say "/: shared mount propagation (as systemd sets it on a real host)"
    mount --make-rshared /
fi
if ! pgrep -x libvirtd >/dev/null; then
    say "starting libvirtd (log /var/log/vmsnapd-lab/libvirtd.log)"
    setsid libvirtd </dev/null >>/var/log/vmsnapd-lab/libvirtd.log 2>&1 &
else
    say "libvirtd running"
fi
ok=0
for _ in $(seq 60); do
    if timeout 5 virsh -c "$URI" version >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.5
done
[ $ok = 1 ] || die "libvirtd does not answer 'virsh -c $URI version' within 30 s (see /var/log/vmsnapd-lab/libvirtd.log)"
say "zfs-fuse and libvirtd ($URI) answer"

# 4. guest kernel + initrds (cached under /var/cache/vmsnapd-lab/<kernel package version>/)
bash "$HERE/build-guest.sh"

say "done in $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}") s"
