#!/bin/bash
# The GPU call of results/evaluate_speed: `nar-bench evaluate`'s code path (evaluate_checkpoint) timed
# per phase on random weights, plus the bench protocol's NAR-B img/s at the same batch.
#   bash results/evaluate_speed/run.sh [evaluate_speed.py arguments, e.g. --num-samples 50000 --models NAR-B]
#   bash results/evaluate_speed/run.sh --tests [test files]   # only the `cuda` tests of the one-engine work (~5 min)
# Rows, logs and eval.json files go to $OUT (the device machine's output folder; default
# results/runs/evaluate_speed); checkpoints, reference and samples to /tmp/evaluate_speed_work.
# CPU smoke run of the same script (tiny models, seconds of work, minutes on a busy CPU):
#   python results/evaluate_speed/evaluate_speed.py results/runs/evaluate_speed_smoke --smoke
source scripts/device_env.sh
R=${OUT:-results/runs/evaluate_speed}; mkdir -p "$R"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$R/gpu.txt" 2>/dev/null
if [ "${1:-}" = "--tests" ]; then
  start=$SECONDS
  shift
  FILES=("$@"); [ ${#FILES[@]} -eq 0 ] && FILES=(tests/test_generation_engine.py tests/test_run_evaluate.py
    tests/test_efficiency.py tests/test_noise.py tests/test_fast_vae_decode.py tests/test_fused_decode.py)
  timeout "${TEST_TIMEOUT:-570}" python3 -m pytest -v -m cuda -p no:cacheprovider --tb=short --durations=15 \
    "${FILES[@]}" > "$R/cudatests.txt" 2>&1
  echo "cuda tests, exit $? ($((SECONDS - start)) s): $(tail -1 "$R/cudatests.txt")"
  grep -E "PASSED|FAILED|ERROR" "$R/cudatests.txt" | cut -c1-160
  exit 0
fi
start=$SECONDS
python3 results/evaluate_speed/evaluate_speed.py "$R" "$@" 2> "$R/stderr.txt" | tee "$R/log.txt"
echo "evaluate_speed.py: exit ${PIPESTATUS[0]}, $((SECONDS - start)) s (stderr: $R/stderr.txt)"
