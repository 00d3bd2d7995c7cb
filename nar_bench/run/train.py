"""``nar-bench train``: train one configured generator with Lightning, log it to MLflow, write samples and a summary."""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, open_dict, read_write

from nar_bench.errors import NarBenchError
from nar_bench.evaluation import check_eval_inputs, evaluate
from nar_bench.images import save_samples
from nar_bench.lit.data import GeneratorDataModule
from nar_bench.lit.module import GeneratorModule
from nar_bench.lit.progress import duration, grid_lines, run_folder_line
from nar_bench.lit.trainer import check_generator_inputs, check_inputs, make_trainer, run_directory, uses_gpu
from nar_bench.nn.transformer import count_parameters
from nar_bench.tracking.lifecycle import run_end_status, sqlite_path
from nar_bench.tracking.mlflow import client, log_artifact, make_logger, tracking_uri
from nar_bench.tracking.names import RUN_DIR_TAG
from nar_bench.tracking.report import write_table


@dataclass
class FittedRun:
    """A trained module and the run it was logged to (for evaluation after training)."""

    module: GeneratorModule
    trainer: L.Trainer
    logger: MLFlowLogger
    run_dir: Path
    run_name: str


def fit(cfg: DictConfig, run_name: str | None = None, parent_run_id: str | None = None,
        tags: dict[str, str] | None = None, resume: ResumePoint | None = None,
        param_keys: Collection[str] | None = None) -> FittedRun:
    """Trains ``cfg`` in a new MLflow run (a child of ``parent_run_id`` if given, tagged ``tags``),
    or continues the run ``resume`` (default: the one ``trainer.resume`` names) from its checkpoint
    (from step 0 without one) up to ``trainer.max_steps``. The run stays open (the caller ends it:
    ``logger.end()``) unless fitting raises. Every rank returns. ``param_keys``: the config settings
    logged as params (``make_logger``; None: all)."""
    check_inputs(cfg)
    check_generator_inputs(cfg)
    if cfg.eval.after_training:
        check_eval_inputs(cfg)  # not after hours of training
    run_name = run_name or cfg.tracking.run_name or f"{cfg.model.paradigm}-{cfg.model.size}"
    if resume is None and cfg.trainer.resume:
        resume = find_resume_point(cfg, run_name)
    cfg = without_resume(cfg)  # a run's params are the same whether it was resumed or not
    L.seed_everything(cfg.seed, workers=True)
    data = GeneratorDataModule(cfg.data, cfg.seed)
    data.split("val")  # made (an image folder's files checked) before the run opens, as the training split
    module = GeneratorModule(cfg, data.num_classes)
    logger = make_logger(cfg.tracking, run_name, parent_run_id, tags, run_id=resume.run_id if resume else None,
                         param_keys=param_keys)
    try:
        run_dir = run_directory(cfg, run_name, logger)
        if logger.run_id is not None:
            logger.experiment.set_tag(logger.run_id, RUN_DIR_TAG, str(run_dir.resolve()))
        trainer = make_trainer(cfg, logger, run_dir)
        trainer.fit(module, data, ckpt_path=resume.checkpoint if resume else None)
        # rank 0's folder on every rank: evaluation shards written by any rank must land beside its checkpoint
        run_dir = Path(trainer.strategy.broadcast(str(run_dir)))
    except BaseException as err:
        logger.end(run_end_status(err))
        raise
    return FittedRun(module, trainer, logger, run_dir, run_name)


@dataclass
class ResumePoint:
    """A run to continue: its id and the checkpoint to continue from (None: from step 0)."""

    run_id: str
    checkpoint: Path | None


def without_resume(cfg: DictConfig) -> DictConfig:
    cfg = copy.deepcopy(cfg)
    with read_write(cfg), open_dict(cfg):
        cfg.trainer.resume = None
    return cfg


def find_resume_point(cfg: DictConfig, run_name: str) -> ResumePoint:
    """The run and checkpoint ``trainer.resume`` names: ``latest`` (the newest run of this experiment
    named ``run_name`` with a last.ckpt), a run id, or a path to a .ckpt of a run folder."""
    value = str(cfg.trainer.resume)
    db = sqlite_path(tracking_uri(cfg.tracking))
    c = client(cfg.tracking) if db is None or db.is_file() else None  # a client would create an empty store
    exp = c.get_experiment_by_name(cfg.tracking.experiment) if c is not None else None
    if exp is None:
        raise NarBenchError(f"trainer.resume={value}: experiment '{cfg.tracking.experiment}' has no runs in "
                            f"{cfg.tracking.tracking_uri}; train without trainer.resume first")
    runs = c.search_runs([exp.experiment_id], f"tags.`{RUN_DIR_TAG}` != ''", order_by=["attributes.start_time DESC"],
                         max_results=5000)
    if value == "latest":
        runs = [r for r in runs if r.info.run_name == run_name]
        candidates = [r for r in runs if (Path(r.data.tags[RUN_DIR_TAG]) / "checkpoints" / "last.ckpt").is_file()]
        what = f"no run named '{run_name}' with a checkpoints/last.ckpt"
    elif value.endswith(".ckpt"):
        folder = str(Path(value).resolve().parent.parent)
        candidates = [r for r in runs if r.data.tags[RUN_DIR_TAG] == folder and Path(value).is_file()]
        what = f"no run whose folder holds '{value}'"
    else:
        candidates = [r for r in runs if r.info.run_id == value]
        what = f"no run with id '{value}' and a run folder"
    if not candidates:
        raise NarBenchError(f"trainer.resume={value}: {what} in experiment '{cfg.tracking.experiment}'; "
                            "use trainer.resume=latest, a run id or a path to a run's checkpoints/*.ckpt")
    run = candidates[0]
    checkpoint = Path(value) if value.endswith(".ckpt") else Path(run.data.tags[RUN_DIR_TAG]) / "checkpoints/last.ckpt"
    if not checkpoint.is_file():
        raise NarBenchError(f"trainer.resume={value}: run {run.info.run_id} has no checkpoint '{checkpoint}'")
    return ResumePoint(run.info.run_id, checkpoint)


def train(cfg: DictConfig, run_name: str | None = None, parent_run_id: str | None = None) -> dict:
    """Fits ``cfg`` and returns a summary row (also written as CSV/Markdown and logged to MLflow),
    plus the evaluation's metrics (logged to the same run) with ``eval.after_training``; the run ends
    FINISHED once they are logged."""
    run = fit(cfg, run_name, parent_run_id)
    try:
        summary = finish_run(cfg, run.module, run.trainer, run.logger, run.run_dir, run.run_name) \
            if run.trainer.is_global_zero else {}
        if cfg.eval.after_training:  # every rank generates its shards
            summary.update(evaluate(run.module, cfg, logger=run.logger, out_dir=run.run_dir / "eval"))
    except BaseException as err:
        run.logger.end(run_end_status(err))
        raise
    run.logger.end()
    return summary


def finish_run(cfg: DictConfig, module: GeneratorModule, trainer: L.Trainer, logger, run_dir: Path,
               run_name: str) -> dict:
    """Final sample grid (timed) and a one-row summary table, written and logged as artifacts."""
    if uses_gpu(cfg.trainer):  # Lightning's teardown hands the model back on the CPU
        module = module.cuda()
    before, after = grid_lines(len(module.sample_grid_labels()), module.paradigm.num_steps)
    print(before, file=sys.stderr, flush=True)
    start = time.perf_counter()
    images = module.sample_grid(cfg.seed)
    if module.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(after.format(seconds=duration(seconds)), file=sys.stderr, flush=True)
    metrics = trainer.callback_metrics
    if not metrics and logger.run_id is not None:  # resumed at its last step: nothing ran, the run has them
        metrics = logger.experiment.get_run(logger.run_id).data.metrics
    summary = {
        "run": run_name,
        "paradigm": cfg.model.paradigm,
        "size": cfg.model.size,
        "params_M": round(count_parameters(module.paradigm) / 1e6, 3),
        "steps_per_image": module.paradigm.num_steps,
        "train_steps": trainer.global_step,
        "train_loss": round(float(metrics.get("train/loss", float("nan"))), 4),
        "val_loss": round(float(metrics.get("val/loss", float("nan"))), 4),
        "sample_batch": len(images),
        "sample_seconds": round(seconds, 3),
        "device": str(module.device),
        "mlflow_run_id": logger.run_id,
        "run_dir": str(run_dir),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    grid = save_samples(images, run_dir / "samples.png", nrow=module.grid_columns)  # .gif for video
    for path in (grid, *write_table(pd.DataFrame([summary]), run_dir / "summary.csv")):
        log_artifact(logger, path)
    logger.experiment.log_metric(logger.run_id, "sample_seconds", seconds)
    return summary


def main(args: argparse.Namespace) -> None:
    from nar_bench.config import load_config

    overrides = [*args.overrides, *(["trainer.resume=latest"] if getattr(args, "resume", False) else [])]
    summary = train(load_config(args.config, overrides))
    if summary:
        print(" ".join(f"{k}={v}" for k, v in summary.items()))
        print(run_folder_line(summary["run_dir"], summary["mlflow_run_id"]), file=sys.stderr)  # stdout: key=value
