#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build CoQuant: OpenBLAS + LAPACKE (the Tensor layer's BLAS/LAPACK)
# and pkg-config (SwiftPM finds OpenBLAS through it), and bzip2 (HellaSwag's task data is stored compressed). Works as root with no prior `apt-get update`; uses sudo
# otherwise. Does nothing when everything is already there.
set -euo pipefail

need=()
for pkg in libopenblas-dev liblapacke-dev pkg-config bzip2; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [[ ${#need[@]} -eq 0 ]]; then
    echo "install-deps: OpenBLAS, LAPACKE, pkg-config and bzip2 are installed" >&2
    exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "install-deps: error: need root (or sudo) to apt-get install ${need[*]}" >&2; exit 1; }
    sudo=sudo
fi
echo "install-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
pkg-config --exists openblas || { echo "install-deps: error: pkg-config cannot find openblas after installing it" >&2; exit 1; }
echo "install-deps: done" >&2
