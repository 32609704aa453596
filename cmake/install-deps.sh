#!/usr/bin/env bash
# Installs the Debian 12 packages that dsx needs to build and test, and nothing when all are present.
# Uses sudo only when not run as root. The CUDA toolkit (nvcc) is optional and not installed here.
set -euo pipefail

packages=(cmake g++ make ninja-build libopenblas-dev libopenblas-openmp-dev libboost-dev catch2 nlohmann-json3-dev libcli11-dev libfmt-dev
          libonig-dev zlib1g-dev)

if ! command -v dpkg-query >/dev/null; then
  echo "install-deps: no dpkg-query: this script is for Debian 12; install the equivalents of" >&2
  echo "  ${packages[*]}" >&2
  exit 1
fi
missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all packages present"
  exit 0
fi

as_root=()
if [[ $(id -u) -ne 0 ]]; then
  as_root=(sudo)
fi
echo "install-deps: installing ${missing[*]}"
"${as_root[@]}" apt-get update
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
