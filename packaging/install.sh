#!/bin/bash
# Install vmsnapd from this checkout: its own venv, the CLI on PATH, the systemd unit, the example policy (never
# over an existing one), the man page and bash completion. Run by `make install`; every location is a variable
# (see the Makefile). With DESTDIR set the tree is staged for a package: the venv is built at
# $DESTDIR$VENVDIR and every path inside it is rewritten to $VENVDIR.  docs/install.md explains the choices.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${DESTDIR:=}" "${PREFIX:=/usr/local}" "${VENVDIR:=/opt/vmsnapd}" "${SYSCONFDIR:=/etc}"
: "${UNITDIR:=$PREFIX/lib/systemd/system}" "${MANDIR:=$PREFIX/share/man}"
: "${BASHCOMPDIR:=$PREFIX/share/bash-completion/completions}" "${DOCDIR:=$PREFIX/share/doc/vmsnapd}"
: "${SYSTEM_PYTHON:=/usr/bin/python3}" "${BUILDDIR:=$REPO/build}" "${INSTALL_CONFIG:=yes}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
say() { echo "install: $*"; }
die() { echo "install: ERROR: $*" >&2; exit 1; }
# A relative DESTDIR would end up inside the venv's absolute paths half-rewritten: make it absolute.
if [ -n "$DESTDIR" ]; then DESTDIR="$(realpath -m "$DESTDIR")"; fi

[ "${VENVDIR:0:1}" = / ] && [ "${PREFIX:0:1}" = / ] || die "VENVDIR and PREFIX must be absolute paths"
[ -x "$SYSTEM_PYTHON" ] || die "$SYSTEM_PYTHON not found (apt-get install python3 python3-venv)"
"$SYSTEM_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$SYSTEM_PYTHON is older than 3.11"
"$SYSTEM_PYTHON" -c 'import ensurepip, venv' 2>/dev/null || die "$SYSTEM_PYTHON has no venv module (apt-get install python3-venv)"

if [ -z "$DESTDIR" ] && dpkg-query -W -f='${Status}' vmsnapd 2>/dev/null | grep -q 'install ok installed'; then
    die "vmsnapd is installed from the Debian package here: upgrade with a newer .deb, or apt remove vmsnapd first"
fi
venv="$DESTDIR$VENVDIR"
if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ]; then
    die "$venv exists and is not a Python venv: refusing to touch it"
fi
if [ -n "$DESTDIR" ] || ! "$venv/bin/python" -c '' 2>/dev/null; then
    # A staged tree is always built fresh; on a host, a venv whose interpreter is gone is rebuilt.
    rm -rf "$venv"
    say "creating venv $venv with $SYSTEM_PYTHON"
    "$SYSTEM_PYTHON" -m venv "$venv"
else
    say "upgrading the existing venv $venv"
fi
# libvirt-python has no wheel on PyPI: pip builds it against the host's libvirt (python3-dev, libvirt-dev,
# pkg-config, gcc). Pinned versions: packaging/constraints.txt.
say "pip install vmsnapd and its dependencies (log: $BUILDDIR/pip.log)"
mkdir -p "$BUILDDIR"
if ! "$venv/bin/python" -m pip install --no-compile --upgrade -c "$REPO/packaging/constraints.txt" "$REPO" \
        >"$BUILDDIR/pip.log" 2>&1; then
    tail -n 25 "$BUILDDIR/pip.log" >&2
    grep -q "pkg-config\|Python.h\|libvirt.pc\|command .gcc. failed\|x86_64-linux-gnu-gcc" "$BUILDDIR/pip.log" \
        && echo "install: hint: building libvirt-python needs: apt-get install python3-dev libvirt-dev pkg-config gcc" >&2
    die "pip install failed"
fi
if [ -n "$DESTDIR" ]; then
    # Make the staged venv work at $VENVDIR: scripts' #! lines, activate scripts and pyvenv.cfg name the
    # staging directory until rewritten (the bin/python* symlinks point at the system python and stay).
    while IFS= read -r -d '' f; do
        if grep -qF "$venv" "$f"; then sed -i "s|$venv|$VENVDIR|g" "$f"; fi
    done < <(find "$venv/bin" "$venv/pyvenv.cfg" -maxdepth 1 -type f -print0)
    "$SYSTEM_PYTHON" -m compileall -q -f -j0 -s "$DESTDIR" -p / "$venv/lib" >/dev/null
else
    "$venv/bin/python" -m compileall -q -j0 "$venv/lib" >/dev/null
fi

# Man page and bash completion, generated from the argparse parser of what was just installed.
gen="$BUILDDIR/gen"
if ! PYTHONPATH="$gen" "$venv/bin/python" -c 'import shtab, argparse_manpage' 2>/dev/null; then
    say "fetching the generators (shtab, argparse-manpage) into $gen"
    rm -rf "$gen"
    "$venv/bin/python" -m pip install -q --no-compile --target "$gen" -c "$REPO/packaging/constraints.txt" \
        shtab argparse-manpage >"$BUILDDIR/pip-gen.log" 2>&1 || { cat "$BUILDDIR/pip-gen.log" >&2; die "pip install shtab argparse-manpage failed"; }
fi
version="$("$venv/bin/python" -c 'import vmsnapd; print(vmsnapd.__version__)')"
PYTHONPATH="$gen" "$venv/bin/python" -B "$REPO/tools/gen_manpage.py" --version "$version" \
    --include "$REPO/packaging/vmsnapd.8.include" --output "$BUILDDIR/vmsnapd.8"
PYTHONPATH="$gen" "$venv/bin/python" -B -m shtab --shell=bash --prog vmsnapd vmsnapd.cli.build_parser \
    >"$BUILDDIR/vmsnapd.bash-completion"

# The CLI on PATH: a symlink into the venv (never over a file that is not ours).
bin="$DESTDIR$PREFIX/bin/vmsnapd"
install -d -m 0755 "$DESTDIR$PREFIX/bin"
if [ -e "$bin" ] && [ ! -L "$bin" ]; then
    die "$bin exists and is not a symlink: remove it first (an older manual install?)"
fi
ln -sfn "$VENVDIR/bin/vmsnapd" "$bin"

install -d -m 0755 "$DESTDIR$UNITDIR" "$DESTDIR$MANDIR/man8" "$DESTDIR$BASHCOMPDIR" "$DESTDIR$DOCDIR" \
    "$DESTDIR$PREFIX/share/vmsnapd"
sed -e "s|/opt/vmsnapd/|$VENVDIR/|g" -e "s|file:///usr/share/doc/vmsnapd/|file://$DOCDIR/|g" \
    "$REPO/systemd/vmsnapd.service" >"$BUILDDIR/vmsnapd.service"
install -m 0644 "$BUILDDIR/vmsnapd.service" "$DESTDIR$UNITDIR/vmsnapd.service"
gzip -9n -c "$BUILDDIR/vmsnapd.8" >"$BUILDDIR/vmsnapd.8.gz"
install -m 0644 "$BUILDDIR/vmsnapd.8.gz" "$DESTDIR$MANDIR/man8/vmsnapd.8.gz"
install -m 0644 "$BUILDDIR/vmsnapd.bash-completion" "$DESTDIR$BASHCOMPDIR/vmsnapd"
install -m 0644 "$REPO/README.md" "$DESTDIR$DOCDIR/README.md"
install -d -m 0755 "$DESTDIR$DOCDIR/docs"
install -m 0644 "$REPO"/docs/*.md "$DESTDIR$DOCDIR/docs/"
# The example lives in share/, not doc/: minimal systems drop /usr/share/doc (dpkg path-exclude).
install -m 0644 "$REPO/config/vmsnapd.toml" "$DESTDIR$PREFIX/share/vmsnapd/vmsnapd.toml"
install -m 0644 "$REPO/packaging/copyright" "$DESTDIR$DOCDIR/copyright"

# The policy: root-owned, 0600 in a 0700 directory (it names commands run as root); an existing one is kept.
if [ "$INSTALL_CONFIG" = yes ]; then
    install -d -m 0700 "$DESTDIR$SYSCONFDIR/vmsnapd"
    conf="$DESTDIR$SYSCONFDIR/vmsnapd/vmsnapd.toml"
    if [ -e "$conf" ] || [ -L "$conf" ]; then
        say "kept the existing $conf (the example is $PREFIX/share/vmsnapd/vmsnapd.toml)"
    else
        install -m 0600 "$REPO/config/vmsnapd.toml" "$conf"
        say "installed the example policy as $conf: edit it, then: vmsnapd config check"
    fi
fi
say "done: $VENVDIR (vmsnapd $version), $PREFIX/bin/vmsnapd, $UNITDIR/vmsnapd.service${DESTDIR:+ (staged in $DESTDIR)}"
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    say "enable with: systemctl enable --now vmsnapd   (after a reinstall: systemctl try-restart vmsnapd)"
fi
