#!/bin/bash
# The Debian package's acceptance check (docs/install.md): in a fresh Debian 12 root (a debootstrap minbase,
# cached as a tarball under /var/lib/vmsnapd-lab/chroot/, unpacked anew for every run) install the .deb with
# `apt install ./vmsnapd_*.deb`, then `vmsnapd --help`, `vmsnapd config check` on the shipped example and
# `systemd-analyze verify` of the installed unit; then remove and purge it. Prints one "CHECK ok: …" line per
# check; exit 0 only when all passed. Downloaded .debs are cached too (apt-archives/). As root.
set -euo pipefail
deb="$(readlink -f "${1:?usage: $0 dist/vmsnapd_VERSION_ARCH.deb}")"
[ -f "$deb" ] || { echo "chroot-test: no such file: $1" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "chroot-test: must run as root (debootstrap, chroot, mount)" >&2; exit 2; }
DIR="${VMSNAPD_CHROOT_DIR:-/var/lib/vmsnapd-lab/chroot}"
SUITE=bookworm
say() { echo "chroot-test: $*"; }
ok() { echo "CHECK ok: $*"; }
die() { echo "chroot-test: FAILED: $*" >&2; exit 1; }
mkdir -p "$DIR/apt-archives/partial"

# The mirrors apt already uses on this host (deb822 or one-line sources), else Debian's official ones.
mirror_for() {  # $1: suite
    grep -rhs -A3 -e "Suites:.*\b$1\b" -e "^deb .* $1 " /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
        | grep -o -m1 -e 'https\?://[^ ]*' || true
}
MIRROR="$(mirror_for "$SUITE")"; MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SECURITY="$(mirror_for "$SUITE-security")"; SECURITY="${SECURITY:-http://deb.debian.org/debian-security}"

base="$DIR/$SUITE-minbase.tar"
(
    flock 9
    if [ ! -f "$base" ]; then
        say "debootstrap --variant=minbase $SUITE from $MIRROR (once; cached in $base)"
        tmp="$(mktemp -d "$DIR/debootstrap.XXXXXX")"
        debootstrap --variant=minbase "$SUITE" "$tmp" "$MIRROR" >"$DIR/debootstrap.log" 2>&1 \
            || { tail -n 20 "$DIR/debootstrap.log" >&2; rm -rf --one-file-system "$tmp"; die "debootstrap"; }
        tar -C "$tmp" -cf "$base.new" . && mv "$base.new" "$base"
        rm -rf --one-file-system "$tmp"
    fi
) 9>"$DIR/base.lock"

root="$(mktemp -d "$DIR/run.XXXXXX")"
cleanup() {
    for m in "$root/var/cache/apt/archives" "$root/proc" "$root/sys" "$root/dev/pts"; do
        if mountpoint -q "$m"; then umount "$m" || umount -l "$m"; fi
    done
    rm -rf --one-file-system "$root"
    rm -f "$root.log"
}
trap cleanup EXIT
tar -C "$root" -xf "$base"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"   # no service starts inside the chroot
chmod 0755 "$root/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$root/etc/resolv.conf"
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
SOURCES
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --bind "$DIR/apt-archives" "$root/var/cache/apt/archives"
cp "$deb" "$root/tmp/"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 "$@"; }
APT_OPTS=(-o APT::Sandbox::User=root -o Dpkg::Use-Pty=0 -q)

say "apt-get update in $root"
in_root apt-get "${APT_OPTS[@]}" update >"$root.log" 2>&1 || { cat "$root.log" >&2; die "apt-get update"; }
say "apt install ./$(basename "$deb") (--no-install-recommends)"
if ! in_root sh -c "cd /tmp && apt ${APT_OPTS[*]} install -y --no-install-recommends ./$(basename "$deb")" \
        >"$root.log" 2>&1; then
    tail -n 40 "$root.log" >&2; rm -f "$root.log"; die "apt install ./$(basename "$deb")"
fi
for p in vmsnapd libvirt-daemon-system qemu-utils zstd libvirt0; do
    in_root dpkg-query -W -f='${Status}\n' "$p" | grep -q 'install ok installed' || die "$p is not installed"
done
ok "apt install ./$(basename "$deb") installed vmsnapd with libvirt-daemon-system, qemu-utils, zstd"

out="$(in_root vmsnapd --help)" || die "vmsnapd --help"
grep -q "usage: vmsnapd" <<<"$out" || die "vmsnapd --help printed no usage: $out"
ok "vmsnapd --help"

conf=/etc/vmsnapd/vmsnapd.toml
[ "$(stat -c '%a %U' "$root$conf")" = "600 root" ] || die "$conf is $(stat -c '%a %U' "$root$conf"), not 600 root"
[ "$(stat -c '%a' "$root/etc/vmsnapd")" = 700 ] || die "/etc/vmsnapd is not 0700"
cmp -s "$root$conf" "$root/usr/share/vmsnapd/vmsnapd.toml" || die "$conf is not the shipped example"
ok "the example policy is $conf, root 0600 in a 0700 directory"
out="$(in_root vmsnapd config check 2>&1)" || die "vmsnapd config check on the shipped example: $out"
grep -q "valid" <<<"$out" || die "vmsnapd config check printed: $out"
ok "vmsnapd config check on the shipped example"

in_root test -f /usr/share/man/man8/vmsnapd.8.gz || die "no man page"
in_root test -f /usr/share/bash-completion/completions/vmsnapd || die "no bash completion"
in_root bash -c 'source /usr/share/bash-completion/completions/vmsnapd && complete -p vmsnapd' >/dev/null \
    || die "the bash completion does not register for vmsnapd"
ok "man page and bash completion installed"

# systemd-analyze verify also runs `man` for the unit's Documentation=man:vmsnapd(8): install both tools.
in_root apt-get "${APT_OPTS[@]}" install -y --no-install-recommends systemd man-db >"$root.log" 2>&1 \
    || { tail -n 20 "$root.log" >&2; die "apt-get install systemd man-db"; }
out="$(in_root systemd-analyze verify /lib/systemd/system/vmsnapd.service 2>&1)" \
    || die "systemd-analyze verify: $out"
if grep -q "vmsnapd" <<<"$out"; then die "systemd-analyze verify complains: $out"; fi
ok "systemd-analyze verify /lib/systemd/system/vmsnapd.service"
score="$(in_root systemd-analyze security --offline=yes /lib/systemd/system/vmsnapd.service 2>&1 \
         | sed -n 's/.*Overall exposure level for vmsnapd.service: \([0-9.]*\).*/\1/p')"
awk "BEGIN{exit !($score <= 6.0)}" || die "systemd-analyze security: $score > 6.0"
ok "systemd-analyze security --offline=yes: $score"

echo "# keep me" >>"$root$conf"
in_root apt-get "${APT_OPTS[@]}" install -y --reinstall /tmp/"$(basename "$deb")" >"$root.log" 2>&1 \
    || { tail -n 20 "$root.log" >&2; die "reinstall"; }
grep -q "# keep me" "$root$conf" || die "a reinstall overwrote the edited $conf"
ok "a reinstall keeps the edited policy"
in_root apt-get "${APT_OPTS[@]}" remove -y vmsnapd >"$root.log" 2>&1 || die "apt-get remove vmsnapd"
[ ! -e "$root/opt/vmsnapd" ] && [ ! -e "$root/usr/bin/vmsnapd" ] || die "apt remove left /opt/vmsnapd or /usr/bin/vmsnapd"
[ -f "$root$conf" ] || die "apt remove deleted $conf"
in_root apt-get "${APT_OPTS[@]}" purge -y vmsnapd >"$root.log" 2>&1 || die "apt-get purge vmsnapd"
[ ! -e "$root/etc/vmsnapd" ] || die "apt purge left /etc/vmsnapd"
ok "apt remove keeps the policy, purge removes it, both remove /opt/vmsnapd"
rm -f "$root.log"
say "all checks passed"
