#!/bin/bash
# Build (or reuse from cache) the lab guest: Debian cloud kernel (dpkg -x, never installed) + busybox initrds.
# Output: /var/cache/vmsnapd-lab/<kernel package version>/{vmlinuz,initrd-counter.img,initrd-agent.img}
# and the symlink /var/cache/vmsnapd-lab/current -> that directory.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${VMSNAPD_LAB_CACHE:-/var/cache/vmsnapd-lab}"
log() { echo "build-guest: $*"; }
die() { echo "build-guest: ERROR: $*" >&2; exit 1; }

pkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*-cloud-amd64\)$/\1/p' | head -n1)"
[ -n "$pkg" ] || die "cannot resolve the package linux-image-cloud-amd64 depends on (apt-get update?)"
ver="$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')"
[ -n "$ver" ] && [ "$ver" != "(none)" ] || die "no candidate version for $pkg"
# the init script and this builder are part of the key, so editing them rebuilds the initrds
stamp="$(cat "$HERE/guest-init.sh" "$HERE/build-guest.sh" | sha256sum | cut -c1-12)"
out="$CACHE/$pkg-$ver"
mkdir -p "$out"
if [ -f "$out/vmlinuz" ] && [ -f "$out/initrd-counter.img" ] && [ -f "$out/initrd-agent.img" ] \
   && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
    ln -sfn "$out" "$CACHE/current"
    log "cached guest $out (kernel $pkg $ver) - nothing to do"
    exit 0
fi
work="$(mktemp -d)"; chmod 755 "$work"  # apt-get download runs as _apt
trap 'rm -rf "$work"' EXIT
if [ ! -f "$out/vmlinuz" ] || [ ! -d "$out/modules" ]; then
    log "downloading $pkg $ver"
    ( cd "$work" && apt-get -o APT::Sandbox::User=root download "$pkg=$ver" >/dev/null ) || die "apt-get download $pkg failed"
    dpkg -x "$work"/*.deb "$work/root"
    cp "$work"/root/boot/vmlinuz-* "$out/vmlinuz"
    mkdir -p "$out/modules"
    for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk virtio_console; do
        f="$(find "$work/root/lib/modules" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" | head -n1)"
        if [ -z "$f" ]; then
            # built into this kernel? then nothing to load
            if grep -qs "/$m.ko" "$work"/root/lib/modules/*/modules.builtin; then log "$m is built in"; continue; fi
            die "module $m not found in $pkg"
        fi
        case "$f" in
            *.ko.xz) xz -dc "$f" > "$out/modules/$m.ko" ;;
            *.ko.zst) zstd -qdc "$f" > "$out/modules/$m.ko" ;;
            *.ko.gz) gzip -dc "$f" > "$out/modules/$m.ko" ;;
            *) cp "$f" "$out/modules/$m.ko" ;;
        esac
    done
    log "kernel + modules extracted into $out"
fi

build_initrd() {  # $1 = name, $2 = with agent (0/1)
    local r="$work/initrd-$1"
    rm -rf "$r"; mkdir -p "$r"/{bin,sbin,dev,proc,sys,mnt,tmp,run,lib/modules,usr/sbin,etc}
    cp /bin/busybox "$r/bin/busybox"
    cp "$HERE/guest-init.sh" "$r/init"; chmod 755 "$r/init"
    local m
    for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
        [ -f "$out/modules/$m.ko" ] && cp "$out/modules/$m.ko" "$r/lib/modules/"
    done
    if [ "$2" = 1 ]; then
        [ -f "$out/modules/virtio_console.ko" ] && cp "$out/modules/virtio_console.ko" "$r/lib/modules/"
        cp /usr/sbin/qemu-ga "$r/usr/sbin/qemu-ga"
        local lib
        for lib in $(ldd /usr/sbin/qemu-ga | grep -o '/[^ ]*' | sort -u) /lib64/ld-linux-x86-64.so.2; do
            mkdir -p "$r$(dirname "$lib")"; cp -L "$lib" "$r$lib"
        done
        mkdir -p "$r/var/run" "$r/usr/var/run"
    fi
    ( cd "$r" && find . | cpio -o -H newc --quiet | gzip -9 ) > "$out/initrd-$1.img.tmp"
    mv "$out/initrd-$1.img.tmp" "$out/initrd-$1.img"
    log "built $out/initrd-$1.img ($(du -h "$out/initrd-$1.img" | cut -f1))"
}
[ -x /bin/busybox ] || die "/bin/busybox missing (busybox-static)"
command -v qemu-ga >/dev/null || die "qemu-ga missing (qemu-guest-agent)"
build_initrd counter 0
build_initrd agent 1
echo "$stamp" > "$out/stamp"
ln -sfn "$out" "$CACHE/current"
log "guest ready in $out"
