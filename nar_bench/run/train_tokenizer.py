"""Train a learned tokenizer (vq, msvq) on any image dataset with Lightning, logged to MLflow.

The result is ``<run dir>/tokenizer.pt`` holding ``{"model": state_dict}``, the layout of the
official checkpoints, so it is used exactly like ``vq_ds16_c2i.pt``: ``tokenizer.checkpoint=<it>``.
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from omegaconf import DictConfig

from nar_bench.lit.data import GeneratorDataModule
from nar_bench.lit.tokenizer_module import TokenizerModule
from nar_bench.lit.trainer import check_inputs, make_trainer, run_directory
from nar_bench.nn.transformer import count_parameters
from nar_bench.tracking.lifecycle import run_end_status
from nar_bench.tracking.mlflow import make_logger


def train_tokenizer(cfg: DictConfig, run_name: str | None = None) -> dict:
    """Fits ``cfg.tokenizer`` on ``cfg.data`` for ``cfg.trainer.max_steps``; returns a summary row
    with the path of the saved weights (``tokenizer_checkpoint``)."""
    check_inputs(cfg)
    L.seed_everything(cfg.seed, workers=True)
    module = TokenizerModule(cfg)
    data = GeneratorDataModule(cfg.data, cfg.seed)
    run_name = run_name or cfg.tracking.run_name or f"tokenizer-{cfg.tokenizer.name}"
    logger = make_logger(cfg.tracking, run_name)
    try:
        run_dir = run_directory(cfg, run_name, logger)
        trainer = make_trainer(cfg, logger, run_dir)
        trainer.fit(module, data)
        if not trainer.is_global_zero:
            return {}
        path = run_dir / "tokenizer.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": module.tokenizer.state_dict()}, path)
        logger.experiment.set_tag(logger.run_id, "tokenizer_checkpoint", str(path.resolve()))
    except BaseException as err:  # a failure after fit (a full disk) must not leave the run RUNNING
        logger.end(run_end_status(err))
        raise
    logger.end()  # the run stays open after fit (see RunLogger) until its weights are saved
    metrics = trainer.callback_metrics
    return {
        "run": run_name,
        "tokenizer": cfg.tokenizer.name,
        "params_M": round(count_parameters(module.tokenizer) / 1e6, 3),
        "train_steps": trainer.global_step,
        "train_rec_loss": round(float(metrics.get("train/rec_loss", float("nan"))), 4),
        "val_rec_loss": round(float(metrics.get("val/rec_loss", float("nan"))), 4),
        "tokenizer_checkpoint": str(path.resolve()),
        "mlflow_run_id": logger.run_id,
    }


def main(args: argparse.Namespace) -> None:
    from nar_bench.config import load_config

    summary = train_tokenizer(args.cfg or load_config(args.config, args.overrides))
    if summary:
        print(" ".join(f"{k}={v}" for k, v in summary.items()))
