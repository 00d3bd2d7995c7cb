"""Train one configured generator with Lightning, log it to MLflow, write samples and a summary."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig

from nar_bench.errors import NarBenchError
from nar_bench.images import save_samples
from nar_bench.lit.data import GeneratorDataModule
from nar_bench.lit.module import GeneratorModule, log_artifact
from nar_bench.nn.transformer import count_parameters
from nar_bench.tracking.mlflow import make_logger
from nar_bench.tracking.report import write_table


def uses_gpu(trainer_cfg: DictConfig) -> bool:
    """Whether Lightning runs ``trainer_cfg`` on a GPU."""
    return torch.cuda.is_available() and trainer_cfg.accelerator in ("auto", "gpu", "cuda")


def resolve_precision(trainer_cfg: DictConfig) -> str:
    if trainer_cfg.precision != "auto":
        return trainer_cfg.precision
    return "bf16-mixed" if uses_gpu(trainer_cfg) else "32-true"


def run_directory(cfg: DictConfig, run_name: str, logger: MLFlowLogger) -> Path:
    """``<output_dir>/<run name>-<run id prefix>``. Only rank 0 owns the MLflow run; under DDP the
    checkpoint folder is broadcast from rank 0."""
    run_id = logger.run_id or "rank-nonzero"
    return Path(cfg.output_dir) / f"{run_name.replace('/', '_')}-{run_id[:8]}"


def make_trainer(cfg: DictConfig, logger, run_dir: Path) -> L.Trainer:
    t = cfg.trainer
    return L.Trainer(
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=resolve_precision(t),
        val_check_interval=min(t.val_check_interval, t.max_steps),
        check_val_every_n_epoch=None,
        log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=cfg.optim.grad_clip or None,
        logger=logger,
        callbacks=[ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0),
                   LearningRateMonitor("step")],
        default_root_dir=run_dir,
        enable_model_summary=False,
    )


def check_inputs(cfg: DictConfig) -> None:
    """Fails before anything is created (no half-written runs) on missing input files."""
    for key, path in (("model.checkpoint", cfg.model.checkpoint), ("tokenizer.checkpoint", cfg.tokenizer.checkpoint)):
        if path and not Path(path).is_file():
            raise NarBenchError(f"{key}: file '{path}' not found; download it or point {key} at the right path")


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
