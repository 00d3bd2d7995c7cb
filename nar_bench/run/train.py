"""``nar-bench train``: train one configured generator with Lightning, log it to MLflow, write samples and a summary."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig

from nar_bench.config import check_generator_inputs
from nar_bench.images import save_samples
from nar_bench.lit.data import GeneratorDataModule
from nar_bench.lit.module import GeneratorModule
from nar_bench.lit.trainer import check_inputs, make_trainer, run_directory, uses_gpu
from nar_bench.nn.transformer import count_parameters
from nar_bench.tracking.mlflow import log_artifact, make_logger
from nar_bench.tracking.report import write_table


@dataclass
class FittedRun:
    """A trained module and the run it was logged to (for evaluation after training)."""

    module: GeneratorModule
    trainer: L.Trainer
    logger: MLFlowLogger
    run_dir: Path
    run_name: str


def fit(cfg: DictConfig, run_name: str | None = None, parent_run_id: str | None = None) -> FittedRun:
    """Trains ``cfg`` in a new MLflow run (a child of ``parent_run_id`` if given); every rank returns."""
    check_inputs(cfg)
    check_generator_inputs(cfg)
    L.seed_everything(cfg.seed, workers=True)
    data = GeneratorDataModule(cfg.data)
    module = GeneratorModule(cfg, data.num_classes)
    run_name = run_name or cfg.tracking.run_name or f"{cfg.model.paradigm}-{cfg.model.size}"
    logger = make_logger(cfg.tracking, run_name, parent_run_id)
    run_dir = run_directory(cfg, run_name, logger)
    trainer = make_trainer(cfg, logger, run_dir)
    trainer.fit(module, data)
    return FittedRun(module, trainer, logger, run_dir, run_name)


def train(cfg: DictConfig, run_name: str | None = None, parent_run_id: str | None = None) -> dict:
    """Fits ``cfg`` and returns a summary row (also written as CSV/Markdown and logged to MLflow)."""
    run = fit(cfg, run_name, parent_run_id)
    if not run.trainer.is_global_zero:
        return {}
    return finish_run(cfg, run.module, run.trainer, run.logger, run.run_dir, run.run_name)


def finish_run(cfg: DictConfig, module: GeneratorModule, trainer: L.Trainer, logger, run_dir: Path,
               run_name: str) -> dict:
    """Final sample grid (timed) and a one-row summary table, written and logged as artifacts."""
    if uses_gpu(cfg.trainer):  # Lightning's teardown hands the model back on the CPU
        module = module.cuda()
    start = time.perf_counter()
    images = module.sample_grid(cfg.seed)
    if module.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    metrics = trainer.callback_metrics
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
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    grid = save_samples(images, run_dir / "samples.png", nrow=module.grid_columns)  # .gif for video
    for path in (grid, *write_table(pd.DataFrame([summary]), run_dir / "summary.csv")):
        log_artifact(logger, path)
    logger.experiment.log_metric(logger.run_id, "sample_seconds", seconds)
    return summary


def main(args: argparse.Namespace) -> None:
    from nar_bench.config import load_config

    summary = train(load_config(args.config, args.overrides))
    if summary:
        print(" ".join(f"{k}={v}" for k, v in summary.items()))
