#!/usr/bin/env bash
# The test command (README "Quick start"; CI runs it through .ci/run): installs missing packages,
# configures build/, builds what the tests need (target dsx-tests) and runs every test with CTest.
# Without a CUDA device the GPU tests (label gpu) report "skipped". DSX_JOBS sets the parallelism (2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
jobs=${DSX_JOBS:-2}

bash cmake/configure.sh
start=$SECONDS
cmake --build build --target dsx-tests -j "$jobs"
echo "build: $((SECONDS - start)) s"

start=$SECONDS
(cd build && ctest --output-on-failure -j "$jobs")
echo "ctest: $((SECONDS - start)) s"
