#!/bin/bash
# Install what `make deb` needs to build (Debian packages), only when missing. Other apt users may hold the dpkg
# lock: apt waits for it up to DPkg::Lock::Timeout seconds instead of failing.
set -euo pipefail
PACKAGES=(python3 python3-venv python3-dev libvirt-dev pkg-config gcc dpkg-dev gzip)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "build-deps: all present (${PACKAGES[*]})"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "build-deps: missing ${missing[*]}; run as root or install them" >&2; exit 1; }
echo "build-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=300 update -qq
apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}"
