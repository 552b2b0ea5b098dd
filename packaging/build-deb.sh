#!/bin/bash
# Build dist/vmsnapd_<version>_<arch>.deb from the tree `make install DESTDIR=…` stages (one install path for a
# host and for the package), with dpkg-deb. Why not dh-virtualenv or pybuild: docs/install.md.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${SYSTEM_PYTHON:=/usr/bin/python3}"
say() { echo "build-deb: $*"; }
work="$REPO/build/deb"
stage="$work/root"
rm -rf "$work"
mkdir -p "$stage" "$REPO/dist"

version="$("$SYSTEM_PYTHON" -c 'import tomllib; print(tomllib.load(open("'"$REPO"'/pyproject.toml", "rb"))["project"]["version"])')"
arch="$(dpkg --print-architecture)"
pyver="$("$SYSTEM_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
pynext="$("$SYSTEM_PYTHON" -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')"

DESTDIR="$stage" PREFIX=/usr VENVDIR=/opt/vmsnapd SYSCONFDIR=/etc UNITDIR=/lib/systemd/system \
    BUILDDIR="$work/build" INSTALL_CONFIG=no SYSTEM_PYTHON="$SYSTEM_PYTHON" bash "$REPO/packaging/install.sh"

# Shared-library dependencies of the compiled modules in the venv (libvirt0 for libvirt-python, libc6…),
# computed by dpkg-shlibdeps as debhelper would (it needs a debian/control to exist).
mkdir -p "$work/shlibs/debian"
printf 'Source: vmsnapd\n\nPackage: vmsnapd\nArchitecture: any\n' >"$work/shlibs/debian/control"
mapfile -t sos < <(find "$stage/opt/vmsnapd" -name '*.so' -type f)
shlibs="$(cd "$work/shlibs" && dpkg-shlibdeps -O --ignore-missing-info -e"${sos[@]}" 2>"$work/shlibdeps.log" \
          | sed -n 's/^shlibs:Depends=//p')"
[ -n "$shlibs" ] || { cat "$work/shlibdeps.log" >&2; echo "build-deb: dpkg-shlibdeps found nothing" >&2; exit 1; }
case "$shlibs" in *libvirt0*) ;; *) echo "build-deb: libvirt0 missing from $shlibs" >&2; exit 1;; esac

install -d -m 0755 "$stage/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$REPO/packaging/debian/$script" "$stage/DEBIAN/$script"
done
size="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" -e "s/@SHLIBS@/$shlibs/" \
    -e "s/@PYTHON@/python3 (>= $pyver~), python3 (<< $pynext~)/" \
    "$REPO/packaging/debian/control.in" >"$stage/DEBIAN/control"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
    | xargs -0 md5sum >DEBIAN/md5sums)
rm -f "$REPO"/dist/vmsnapd_*.deb
deb="$REPO/dist/vmsnapd_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
say "built $deb ($(du -h "$deb" | cut -f1)); Depends: $(sed -n 's/^Depends: //p' "$stage/DEBIAN/control")"
