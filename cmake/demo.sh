#!/usr/bin/env bash
# The demo command (README "Quick start"): installs missing packages, configures build/, builds
# dsx-tiny-v3 and runs `dsx-tiny-v3 info` and `dsx-tiny-v3 verify` on the golden reference model.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash cmake/configure.sh
cmake --build build --target demo -j "${DSX_JOBS:-2}"
