#!/usr/bin/env bash
# Shared by demo.sh and test.sh: installs missing packages and configures build/ (Release; Ninja for a
# new build folder). Extra arguments go to cmake. Prints how long each step took.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash cmake/install-deps.sh
generator=()
if [[ ! -f build/CMakeCache.txt ]]; then
  generator=(-G Ninja)
fi
start=$SECONDS
cmake -S . -B build "${generator[@]}" "$@"
echo "configure: $((SECONDS - start)) s"
