#!/usr/bin/env bash
# The demo command (README "Quick start"): installs missing packages, configures build/, builds
# dsx-r1-toy and runs the DeepSeek-R1 recipe at toy scale (target r1-demo): pre-training, R1-Zero,
# cold-start SFT, GRPO, rejection sampling + SFT, a reward model, RL with every reward, and distillation
# into a dense student beside a baseline student. Prints the stage table; the report is
# build/r1-demo/report.json and report.html. A rerun continues where the last one stopped (delete
# build/r1-demo to start over). DSX_JOBS sets the build parallelism (2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash cmake/configure.sh
cmake --build build --target r1-demo -j "${DSX_JOBS:-2}"
