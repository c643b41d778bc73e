#!/usr/bin/env bash
# On a GPU host without internet access: install any wheels placed in .whl/ (scripts/fetch-gpu-wheels.sh
# downloads xformers and fla-core there beforehand), run the
# GPU tests and one or more presets, and write everything under $OUT (results, logs, environment).
# Usage: bash scripts/gpu-evidence.sh PRESET[,PRESET...]|- [TIMEOUT_S_PER_PRESET] [--tests]
# Each preset starts a new results file (named by date and GPU; -2, -3, ... when one exists under
# results/), unless RESUME_FILE names a results file of that preset to continue.
# Environment: TEST_TIMEOUT_S, TEST_SELECT (pytest -k), RUN_FLAGS (extra `attnbench run` flags),
# RETRY (with RESUME_FILE: statuses whose rows run again, e.g. oom), LOCAL_ERRORS=1 (then `attnbench local-errors`
# on the preset's file, within the same time limit; LOCAL_ERRORS=NAME[,NAME...]: only those implementations' rows),
# PROFILE ("IMPL[ IMPL...]": `attnbench profile` each at PROFILE_FLAGS, default 64K tokens, D128, causal fwd+bwd).
# Triton autotuning results (fla retunes some kernels at every batch size, ~10-20 s each) are written to
# $OUT/GPU-triton-autotune.tgz; placed in .gpu-cache/ on a later call for the same GPU model, they are reused,
# and `first_call_ms` then leaves out the search (it still includes compilation).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/attnbench-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
presets=${1:-quick}
[ "$presets" = "-" ] && presets=""  # "-": tests and profiles only
limit=${2:-540}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit,temperature.gpu --format=csv | tee "$OUT/machine.txt"
python3 -m suite env > "$OUT/env.json"
python3 -m suite list --device cuda 2>&1 | tee -a "$OUT/machine.txt"
gpu=$(python3 -c "import torch, re; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton-cache}
mkdir -p "$TRITON_CACHE_DIR"
tuned=".gpu-cache/$gpu-triton-autotune.tgz"
[ -f "$tuned" ] && tar -xzf "$tuned" -C "$TRITON_CACHE_DIR" && echo "reusing Triton autotuning results from $tuned"
save_tuning() {
  (cd "$TRITON_CACHE_DIR" && find . -name '*.autotune.json' | tar -czf "$OUT/$gpu-triton-autotune.tgz" -T -)
}
if [ "${3:-}" = "--tests" ]; then
  # SIGINT: pytest stops and prints its summary of what ran; -v names each result as it comes, so the log
  # still says which tests passed if a long Triton autotune ignores the interrupt and pytest is killed.
  timeout --signal=INT --kill-after=30 "${TEST_TIMEOUT_S:-300}" python3 -m pytest -m gpu -v -p no:cacheprovider --durations=12 ${TEST_SELECT:+-k "$TEST_SELECT"} tests > "$OUT/pytest-gpu.txt" 2>&1
  grep -E "FAILED|ERROR|passed|failed" "$OUT/pytest-gpu.txt" | grep -v " PASSED" | tail -n 40
fi
for preset in ${presets//,/ }; do
  name="$(date +%F)_${gpu}_${preset}"; resume=""
  if [ -n "${RESUME_FILE:-}" ] && [[ "$(basename "$RESUME_FILE")" == *"_${preset}"*.jsonl ]]; then
    name=$(basename "$RESUME_FILE" .jsonl); cp "$RESUME_FILE" "$OUT/$name.jsonl"; resume="--resume${RETRY:+ --retry $RETRY}"
  else
    n=2; base=$name
    while [ -f "results/$name.jsonl" ]; do name="$base-$n"; n=$((n + 1)); done
  fi
  out="$OUT/$name.jsonl"
  python3 -m suite run --preset "$preset" --device cuda --out "$out" $resume ${RUN_FLAGS:-} --dry-run 2>&1 | tee "$OUT/plan-$preset.txt" | tail -n 4
  timeout --signal=INT "$limit" python3 -m suite run --preset "$preset" --device cuda --out "$out" $resume ${RUN_FLAGS:-} \
    > "$OUT/run-$preset.txt" 2> "$OUT/run-$preset.log"
  echo "preset $preset exit $?"
  tail -n 40 "$OUT/run-$preset.txt"
  if [ -n "${LOCAL_ERRORS:-}" ]; then  # add the local-inputs figures to approximate rows that lack them
    only=""; [ "$LOCAL_ERRORS" != 1 ] && only="--impl $LOCAL_ERRORS"
    timeout --signal=INT "$limit" python3 -m suite local-errors "$out" $only > "$OUT/local-errors-$preset.txt" 2>&1
    echo "local-errors $preset exit $?"; tail -n 3 "$OUT/local-errors-$preset.txt"
  fi
  save_tuning
done
for impl in ${PROFILE:-}; do
  timeout 300 python3 -m suite profile --impl "$impl" ${PROFILE_FLAGS:---seq-len 4096 --batch 16 --heads 16 --head-dim 128 --causal --mode fwd+bwd} \
    --rows 25 > "$OUT/profile-${impl//[:=,]/_}.txt" 2>&1
  echo "profile $impl exit $?"
done
save_tuning
