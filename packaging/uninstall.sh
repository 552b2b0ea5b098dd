#!/bin/bash
# Reverse `make install`: the venv, the PATH symlink, the unit, the man page, the completion and the docs.
# Never touches /etc/vmsnapd (the policy) nor the state and RAM dumps (/var/lib/vmsnapd): say so instead.
set -euo pipefail
: "${DESTDIR:=}" "${PREFIX:=/usr/local}" "${VENVDIR:=/opt/vmsnapd}" "${SYSCONFDIR:=/etc}"
: "${UNITDIR:=$PREFIX/lib/systemd/system}" "${MANDIR:=$PREFIX/share/man}"
: "${BASHCOMPDIR:=$PREFIX/share/bash-completion/completions}" "${DOCDIR:=$PREFIX/share/doc/vmsnapd}"
say() { echo "uninstall: $*"; }
die() { echo "uninstall: ERROR: $*" >&2; exit 1; }
# A relative DESTDIR would end up inside the venv's absolute paths half-rewritten: make it absolute.
if [ -n "$DESTDIR" ]; then DESTDIR="$(realpath -m "$DESTDIR")"; fi

if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && systemctl is-active --quiet vmsnapd.service; then
    die "vmsnapd.service is running: systemctl disable --now vmsnapd first"
fi
if [ -z "$DESTDIR" ] && dpkg-query -W -f='${Status}' vmsnapd 2>/dev/null | grep -q 'install ok installed'; then
    die "vmsnapd is installed from the Debian package here: apt remove vmsnapd"
fi
venv="$DESTDIR$VENVDIR"
if [ -e "$venv" ]; then
    # Only a venv holding vmsnapd is ours to delete.
    [ -f "$venv/pyvenv.cfg" ] && [ -e "$venv/bin/vmsnapd" ] || die "$venv is not vmsnapd's venv: left alone"
    rm -rf "$venv"
    say "removed $venv"
fi
bin="$DESTDIR$PREFIX/bin/vmsnapd"
if [ -L "$bin" ] && [ "$(readlink "$bin")" = "$VENVDIR/bin/vmsnapd" ]; then
    rm -f "$bin" && say "removed $bin"
elif [ -e "$bin" ]; then
    say "left $bin alone: not the symlink make install creates"
fi
for f in "$DESTDIR$PREFIX/share/vmsnapd/vmsnapd.toml" "$DESTDIR$UNITDIR/vmsnapd.service" "$DESTDIR$MANDIR/man8/vmsnapd.8.gz" "$DESTDIR$BASHCOMPDIR/vmsnapd"; do
    if [ -e "$f" ]; then rm -f "$f" && say "removed $f"; fi
done
if [ -d "$DESTDIR$DOCDIR" ]; then rm -rf "$DESTDIR$DOCDIR" && say "removed $DESTDIR$DOCDIR"; fi
rmdir "$DESTDIR$PREFIX/share/vmsnapd" 2>/dev/null || true
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
say "kept $SYSCONFDIR/vmsnapd (your policy) and /var/lib/vmsnapd (state, RAM dumps): remove them by hand if wanted"
