#!/usr/bin/env bash
# Sets up .venv if needed, then runs the suite on whatever device is there: `bash scripts/bench.sh [run flags]`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec "${ATTNBENCH_VENV:-.venv}/bin/attnbench" run "$@"
