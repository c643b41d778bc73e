#!/usr/bin/env bash
# On a GPU host without internet access: install any wheels placed in .whl/ (scripts/fetch-gpu-wheels.sh
# downloads xformers and fla-core there beforehand), run the GPU tests and one or more presets, and write
# everything under $OUT in few files (hosts that hand back only a handful of files get all of them):
#   machine.txt                 nvidia-smi, `attnbench list --device cuda`, `attnbench env`
#   pytest-gpu.txt              the GPU tests (with --tests)
#   DATE_GPU_PRESET.jsonl       each preset's results
#   log-PRESET.txt              its --dry-run plan, the run's table and progress, and local-errors' output
#   profiles.txt                `attnbench profile` of each PROFILE implementation
#   GPU-triton-autotune.tgz     Triton's autotuning results
# Usage: bash scripts/gpu-evidence.sh PRESET[,PRESET...]|- [TIMEOUT_S_PER_PRESET] [--tests]
# (a preset's run starts no row after TIMEOUT less a margin, min(60 s, a quarter), and exits 3 there)
# Each preset starts a new results file (named by date and GPU; -2, -3, ... when one exists under
# results/), unless RESUME_FILE names a results file of that preset to continue.
# Environment: TEST_TIMEOUT_S, TEST_SELECT (pytest -k), RUN_FLAGS (extra `attnbench run` flags),
# RETRY (with RESUME_FILE: statuses whose rows run again, e.g. oom), LOCAL_ERRORS=1 (then `attnbench local-errors`
# on the preset's file, within the same time limit; LOCAL_ERRORS=NAME[,NAME...]: only those implementations' rows),
# PROFILE ("IMPL[ IMPL...]": `attnbench profile` each at PROFILE_FLAGS, default 64K tokens, D128, causal fwd+bwd),
# DEVICE=cpu (a rehearsal of the same steps on a machine without a GPU: small presets such as smoke),
# PYTHON (the interpreter with torch; default python3, e.g. .venv/bin/python for a rehearsal),
# CHECK=IMPL[,IMPL...] (`attnbench check` of these after the tests, into pytest-gpu.txt, within CHECK_TIMEOUT_S,
# default 180; compiled ones such as the sparse families compile FlexAttention for every shape: minutes),
# AMEND_FILE (a stored results file: a copy under $OUT gets `attnbench local-errors`, the local-inputs errors of
# its approximate rows that lack them, on this GPU, within AMEND_TIMEOUT_S, default 240; log-amend.txt;
# AMEND_IMPL=NAME[,NAME...]: only those implementations' rows, e.g. the ones that compile nothing first).
# Triton autotuning results (fla retunes some kernels at every batch size, ~10-20 s each) are written to
# $OUT/GPU-triton-autotune.tgz; placed in .gpu-cache/ on a later call for the same GPU model, they are reused,
# and `first_call_ms` then leaves out the search (it still includes compilation).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/attnbench-out}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}  # an implementation package of your own stays on it
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
presets=${1:-quick}
[ "$presets" = "-" ] && presets=""  # "-": tests and profiles only
limit=${2:-540}
{
  [ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit,temperature.gpu --format=csv
  "$PY" -m suite list --device "$DEVICE" 2>&1
  "$PY" -m suite env
} > "$OUT/machine.txt"
head -n 2 "$OUT/machine.txt"
gpu=$("$PY" -c "import sys; from suite.results.environment import machine_name; from suite.results.naming import slug
print(slug(machine_name(sys.argv[1])))" "$DEVICE")
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
  timeout --signal=INT --kill-after=30 "${TEST_TIMEOUT_S:-300}" "$PY" -m pytest -m gpu -v -p no:cacheprovider --durations=12 ${TEST_SELECT:+-k "$TEST_SELECT"} tests > "$OUT/pytest-gpu.txt" 2>&1
  grep -E "FAILED|ERROR|passed|failed" "$OUT/pytest-gpu.txt" | grep -v " PASSED" | tail -n 40
fi
if [ -n "${CHECK:-}" ]; then  # `attnbench check` of these implementations, appended to the test log
  echo "== attnbench check --impl $CHECK" >> "$OUT/pytest-gpu.txt"
  timeout --signal=INT --kill-after=30 "${CHECK_TIMEOUT_S:-180}" "$PY" -m suite check --device "$DEVICE" --impl "$CHECK" \
    >> "$OUT/pytest-gpu.txt" 2>&1
  echo "check exit $?" | tee -a "$OUT/pytest-gpu.txt"
  sed -n '/^== attnbench check/,$p' "$OUT/pytest-gpu.txt" | grep -E "^[a-z].*: (ok|FAILED|NOT CHECKED)|^  (FAIL|ERROR|note)" | head -n 40
fi
if [ -n "${AMEND_FILE:-}" ]; then  # resumable: a file cut short by the timeout keeps the rows amended so far
  amended="$OUT/$(basename "$AMEND_FILE")"
  cp "$AMEND_FILE" "$amended"
  timeout --signal=INT "${AMEND_TIMEOUT_S:-240}" "$PY" -m suite local-errors "$amended" ${AMEND_IMPL:+--impl "$AMEND_IMPL"} \
    > "$OUT/log-amend.txt" 2>&1
  echo "local-errors $(basename "$AMEND_FILE") exit $?" | tee -a "$OUT/log-amend.txt"
  tail -n 4 "$OUT/log-amend.txt"
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
  log="$OUT/log-$preset.txt"
  echo "== plan" > "$log"
  "$PY" -m suite run --preset "$preset" --device "$DEVICE" --out "$out" $resume ${RUN_FLAGS:-} --dry-run >> "$log" 2>&1
  tail -n 4 "$log"
  echo "== run (progress, then the table)" >> "$log"
  # Soft limit first: no row starts after it, so the run normally ends between rows; the hard timeout only
  # interrupts a row that overruns the margin (a long compilation or autotune), and that row is lost.
  # A process that died outright (a native crash) leaves $out.running: resuming records that row as an
  # error and goes on with the rest, within what is left of the limit (at most three times).
  started=$SECONDS
  for attempt in 1 2 3; do
    left=$(( limit - (SECONDS - started) ))
    [ "$left" -lt 30 ] && break
    soft=$(( left - (left / 4 < 60 ? left / 4 : 60) ))
    timeout --signal=INT "$left" "$PY" -m suite run --preset "$preset" --device "$DEVICE" --out "$out" $resume \
      ${RUN_FLAGS:-} --time-limit "$soft" >> "$log" 2>&1
    echo "preset $preset exit $?" | tee -a "$log"
    [ -f "$out.running" ] || break
    echo "the run died while measuring a row ($out.running names it): resuming" | tee -a "$log"
    resume="--resume"  # not --retry: the row it died in is not measured again
  done
  sed -n '/^case /,/^results: /p' "$log" | tail -n 40  # the run's table
  "$PY" -m suite runs "$out" | tee -a "$log"  # rows by status, and what they took
  if [ -n "${LOCAL_ERRORS:-}" ]; then  # add the local-inputs figures to approximate rows that lack them
    only=""; [ "$LOCAL_ERRORS" != 1 ] && only="--impl $LOCAL_ERRORS"
    echo "== local-errors" >> "$log"
    left=$(( limit - (SECONDS - started) )); [ "$left" -lt 30 ] && left=30  # the preset's limit, not a second one
    timeout --signal=INT "$left" "$PY" -m suite local-errors "$out" $only >> "$log" 2>&1
    status=$?
    tail -n 3 "$log"; echo "local-errors $preset exit $status" | tee -a "$log"
  fi
  [ "$DEVICE" = cuda ] && save_tuning
done
for impl in ${PROFILE:-}; do
  echo "== profile $impl" >> "$OUT/profiles.txt"
  timeout 300 "$PY" -m suite profile --impl "$impl" --device "$DEVICE" \
    ${PROFILE_FLAGS:---seq-len 4096 --batch 16 --heads 16 --head-dim 128 --causal --mode fwd+bwd} \
    --rows 25 >> "$OUT/profiles.txt" 2>&1
  echo "profile $impl exit $?"
done
[ "$DEVICE" = cuda ] && save_tuning
ls "$OUT"
