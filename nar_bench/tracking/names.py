"""Every MLflow tag, param, metric prefix and artifact name that nar-bench writes AND reads back
(resume, reports, the notebook): one place, so a writer and its reader cannot drift apart."""

# --- tags ----------------------------------------------------------------------------------------
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests child runs under the parent
# on every run: what ran it (MLflow's own mlflow.source.git.commit reads .git, stale on a copied tree)
COMMIT_TAG, DEVICE_TAG = "nar_bench.commit", "nar_bench.device"
# on every run: the process that owns it (a RUNNING run whose owner is gone is marked KILLED)
HOST_TAG, PID_TAG, PROCESS_START_TAG = "nar_bench.host", "nar_bench.pid", "nar_bench.process_start"
# on sweep parents that several processes share: WORKER_TAG + host.pid = "host pid start" of each live
# one; CLAIM_TAG + training-group hash = the process running that group (nar_bench.tracking.sharing)
WORKER_TAG, CLAIM_TAG = "nar_bench.worker.", "nar_bench.claim."
SWEEP_KEY_TAG = "nar_bench.sweep_key"  # on sweep parents: hash of the sweep's settings (finds it again to resume)
RUN_DIR_TAG = "nar_bench.run_dir"  # on training runs: their folder (checkpoints/last.ckpt, to resume)
# on sweep child runs; POINT_TAG + short grid key, e.g. nar_bench.point.cfg_scale
VARIANT_TAG, SEED_TAG, POINT_TAG = "nar_bench.variant", "nar_bench.seed", "nar_bench.point."
POINT_KEY_TAG = "nar_bench.point_key"  # hash of a point's config without tracking / output settings
TRAINING_KEY_TAG = "nar_bench.training_key"  # hash of what determines the weights: trainings a resumed sweep reuses
TRAINED_IN_TAG = "nar_bench.trained_in_run"
# on `nar-bench evaluate` runs: hash of what they compute (samples' settings, N, output file); a rerun
# of a KILLED / FAILED one continues in it
EVAL_KEY_TAG = "nar_bench.eval_key"  # on runs that evaluate a model trained in another run
BEST_TAG = "nar_bench.best."  # on sweep parents: BEST_TAG + metric = label of the best group
# on runs that log a config (training, sweep points): what reports group by, without reading config.yaml
PARADIGM_TAG, EXTRACTOR_TAG = "nar_bench.paradigm", "nar_bench.extractor"
# MLflow's marker of a model-training experiment ("genai_development": GenAI); MLflow 3's UI sets and
# reads it, though 3.18's picks the view from its sidebar switch instead (results/mlflow_ui/README.md)
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"

# --- params and metrics --------------------------------------------------------------------------
SWEEP_POINTS_PARAM = "points"  # on sweep parents: number of points (finds a parent killed before its first child)
# flattened config params: every one on a training run, only those its sweep varies on a sweep's child
# (runs before nar_bench.paradigm / nar_bench.extractor tags are read through these)
PARADIGM_PARAM, EXTRACTOR_PARAM = "cfg/model/paradigm", "cfg/eval/extractor"
EVAL_PREFIX = "eval/"  # evaluation metrics: eval/fid, eval/is, ... (and its speed records: eval/generate_img_s, ...)
PROGRESS_PREFIX = "progress/"  # an evaluation's progress while it generates: progress/samples_done, progress/eta_s
LOSS_METRICS = ("train/loss", "val/loss")

# --- artifacts -----------------------------------------------------------------------------------
CONFIG_ARTIFACT = "config.yaml"  # a run's resolved config, whole (a sweep's child logs few params)
POINT_ROW = "point.json"  # a sweep point's result row, on its child run (a resumed sweep reads it back)
TABLE_ARTIFACT = "summary_table.json"  # a sweep's summary as an MLflow table, on the parent
