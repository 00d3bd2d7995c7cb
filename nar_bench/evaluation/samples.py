"""Samples of an evaluation: class-balanced, seeded per sample, written as resumable shards of an
ADM-format .npz (``SampleStore``) through ``Trainer.predict`` on the configured devices."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from nar_bench.lit.shard_sampling import sample_to_store
from nar_bench.lit.trainer import resolve_precision
from nar_bench.metrics.adm_npz import iter_samples
from nar_bench.metrics.sample_store import SampleStore
from nar_bench.nn.sampling import SamplingConfig


def sample_settings(cfg: DictConfig, num_classes: int, **extra) -> dict:
    """What decides the samples (recorded with results; resuming shards requires the same)."""
    return {"sampling": OmegaConf.to_container(cfg.eval.sampling, resolve=True), "seed": cfg.seed,
            "num_classes": num_classes, "decode_batch": cfg.eval.decode_batch, "paradigm": cfg.model.paradigm,
            **extra}


def sampling_trainer(cfg: DictConfig) -> L.Trainer:
    """The predict-only Trainer of evaluation: cfg.trainer's devices / strategy / precision, no logger."""
    t = cfg.trainer
    return L.Trainer(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
                     precision=resolve_precision(t), logger=False, enable_checkpointing=False,
                     enable_model_summary=False)


def generate_samples(module: L.LightningModule, cfg: DictConfig, num_samples: int, out: Path, batch_size: int,
                     settings: dict, png_dir: str | Path | None = None) -> Path | None:
    """Class-balanced samples (label i % num_classes, noise from (cfg.seed, i)) of a GeneratorModule
    into the ADM .npz ``out`` via resumable shards; the path on rank 0, None on other ranks.
    Call on every rank under DDP."""
    store = SampleStore(out, num_samples, cfg.eval.shard_size, settings)
    return sample_to_store(sampling_trainer(cfg), module, store, SamplingConfig(**cfg.eval.sampling), cfg.seed,
                           module.num_classes, batch_size, cfg.eval.decode_batch, png_dir)


def first_samples(path: Path, count: int) -> Tensor:
    """The first ``count`` samples of an .npz as uint8 (count, 3, H, W), or (count, 3, T, H, W) for clips."""
    batch = np.ascontiguousarray(next(iter_samples(path, count)))
    return torch.from_numpy(batch).movedim(-1, 1)
