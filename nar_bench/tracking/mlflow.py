"""MLflow wiring: Lightning's MLFlowLogger for runs, MlflowClient for parent runs of sweeps.

The default store is an embedded SQLite DB (results/mlruns.db) with artifacts under
results/mlartifacts; point ``tracking.tracking_uri`` at an MLflow server to scale out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from nar_bench.tracking.provenance import device_description, git_commit

PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests child runs under the parent
# on every run: what ran it (MLflow's own mlflow.source.git.commit reads .git, stale on a copied tree)
COMMIT_TAG, DEVICE_TAG = "nar_bench.commit", "nar_bench.device"


def origin_tags() -> dict[str, str]:
    return {COMMIT_TAG: git_commit(), DEVICE_TAG: device_description()}


def tracking_uri(tracking: DictConfig) -> str:
    """Relative sqlite paths are made absolute so runs land in the same DB from any directory."""
    uri = tracking.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        db = Path(uri[len(prefix):]).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(db)
    return uri


def artifact_location(tracking: DictConfig) -> str | None:
    loc = tracking.artifact_location
    if loc and "://" not in loc:
        return Path(loc).resolve().as_uri()
    return loc


def client(tracking: DictConfig) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri(tracking))


def experiment_id(tracking: DictConfig) -> str:
    c = client(tracking)
    exp = c.get_experiment_by_name(tracking.experiment)
    if exp is not None:
        return exp.experiment_id
    return c.create_experiment(tracking.experiment, artifact_location=artifact_location(tracking))


def make_logger(tracking: DictConfig, run_name: str | None = None, parent_run_id: str | None = None,
                tags: dict[str, str] | None = None) -> MLFlowLogger:
    experiment_id(tracking)  # creates the experiment with our artifact location on first use
    tags = {**origin_tags(), **(tags or {})}
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    return MLFlowLogger(
        experiment_name=tracking.experiment,
        run_name=run_name or tracking.run_name,
        tracking_uri=tracking_uri(tracking),
        artifact_location=artifact_location(tracking),
        tags=tags,
    )


def create_run(c: MlflowClient, exp_id: str, run_name: str, tags: dict[str, str] | None = None) -> Run:
    """A run opened through the client (sweep parents, benchmark points), tagged like logger runs."""
    return c.create_run(exp_id, run_name=run_name, tags={**origin_tags(), **(tags or {})})


@contextlib.contextmanager
def parent_run(tracking: DictConfig, name: str, params: dict | None = None) -> Iterator[str]:
    """Opens a parent run for a sweep; yields its id. Marked FAILED if the sweep raises.
    Under DDP only rank 0 creates it (other ranks yield ""; their loggers log nothing)."""
    if rank_zero_only.rank != 0:
        yield ""
        return
    c = client(tracking)
    run = create_run(c, experiment_id(tracking), name)
    for key, value in (params or {}).items():
        c.log_param(run.info.run_id, key, value)
    try:
        yield run.info.run_id
    except BaseException:
        c.set_terminated(run.info.run_id, status="FAILED")
        raise
    c.set_terminated(run.info.run_id, status="FINISHED")


def log_artifact(logger, path: Path, subdir: str | None = None) -> None:
    """Logs a file to the MLflow run behind a Lightning MLFlowLogger (no-op for other loggers)."""
    run_id = getattr(logger, "run_id", None)
    if run_id is not None:
        logger.experiment.log_artifact(run_id, str(path), subdir)
