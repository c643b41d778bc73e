#!/usr/bin/env bash
# On a machine that can reach the package registry: download the optional packages a GPU host without
# internet access lacks (xformers, flash-linear-attention's fla-core) into .whl/, where
# scripts/gpu-evidence.sh installs them from. Pinned to the versions the stored GPU results used.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download --quiet --no-deps --dest .whl "xformers==0.0.35" "fla-core==0.6.0"
ls -1 .whl
