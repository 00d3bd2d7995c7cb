#!/bin/bash
# One device call of a GPU sweep: `nar-bench sweep EXPERIMENT` for the seeds given (default 0,1) into an
# MLflow store (a previous call's, if carried in .gpu_store/mlruns.db, ignored by git), stopped after
# SWEEP_TIMEOUT seconds if set (a re-run resumes it), then the report over every FINISHED run of the
# experiment. Run from the repository root:
#   SWEEP_TIMEOUT=540 bash scripts/gpu_sweep.sh experiments/pareto_gpu.yaml 0,1
# It writes to $OUT: mlruns.db (carry it to the next call as .gpu_store/mlruns.db), log.txt and
# report.tar.gz (the report folder: summary.*, quality_vs_speed.*, metrics.png, runs.csv, provenance).
EXPERIMENT=${1:?usage: gpu_sweep.sh EXPERIMENT.yaml [SEEDS]}; SEEDS=${2:-0,1}
source scripts/device_env.sh
NAME=$(basename "$EXPERIMENT" .yaml); R=${OUT:-results/runs/$NAME}; S=/tmp/${NAME}_store; mkdir -p "$R" "$S"
[ -f .gpu_store/mlruns.db ] && cp .gpu_store/mlruns.db "$S/mlruns.db"
T=("tracking.tracking_uri=sqlite:///$S/mlruns.db" "tracking.artifact_location=$S/art" "output_dir=$S/runs")
start=$SECONDS
timeout "${SWEEP_TIMEOUT:-0}" python3 -m nar_bench.cli sweep "$EXPERIMENT" "sweep.seeds=[$SEEDS]" --out "$S/sweep" \
  "${T[@]}" 2>&1 | tee "$R/log.txt" | grep -E "^point|error|Error" | tail -40
echo "sweep $NAME seeds $SEEDS: exit ${PIPESTATUS[0]}, $((SECONDS - start)) s" | tee -a "$R/log.txt"
python3 -m nar_bench.cli report "$EXPERIMENT" --parent all --out "$S/report" "${T[@]}" 2>&1 | tail -5 | tee -a "$R/log.txt"
cp "$S/mlruns.db" "$R/mlruns.db"
tar czf "$R/report.tar.gz" -C "$S" report
