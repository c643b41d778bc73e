#!/usr/bin/env bash
# Sets up .venv if needed, then runs the tests (GPU tests skip with a reason without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec "${ATTNBENCH_VENV:-.venv}/bin/python" -m pytest "$@"
