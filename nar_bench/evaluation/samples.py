"""Samples of an evaluation: class-balanced, seeded per sample, written as resumable shards of an
ADM-format .npz (``SampleStore``) through ``Trainer.predict`` on the configured devices, by the
engine ``eval.engine`` resolves to (``nar_bench.paradigms.generation``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader

from nar_bench.lit.shard_sampling import Progress, sample_to_store
from nar_bench.lit.trainer import resolve_precision, uses_gpu
from nar_bench.metrics.adm_npz import iter_samples
from nar_bench.metrics.sample_store import SampleStore
from nar_bench.nn import fast_vae_decode
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.paradigms.generation import PRECISION_DTYPES, GenerationEngine, resolve_engine
from nar_bench.tracking.provenance import device_name


def sample_settings(cfg: DictConfig, num_classes: int, **extra) -> dict:
    """What decides the samples (recorded with results; resuming shards requires the same).
    ``generate_samples`` adds the engine's (``engine_settings``)."""
    return {"sampling": OmegaConf.to_container(cfg.eval.sampling, resolve=True), "seed": cfg.seed,
            "num_classes": num_classes, "decode_batch": cfg.eval.decode_batch, "paradigm": cfg.model.paradigm,
            **extra}


def engine_settings(module: L.LightningModule, cfg: DictConfig, batch_size: int) -> dict:
    """The engine ``eval.engine`` resolves to for ``module``'s paradigm on cfg.trainer's devices, its
    dtype (graph: bf16 | fp32 weights; eager: the Trainer's precision), the micro-batch and decode
    batch sizes, the device model and (graph) the fast decoder's version: with these, shards are
    bit-identical however the work is split (the invariance rule of ``nar_bench.paradigms.generation``).
    Raises on an engine that cannot run here."""
    cuda, precision = uses_gpu(cfg.trainer), resolve_precision(cfg.trainer)
    engine = resolve_engine(cfg.eval.engine, type(module.paradigm), cuda, precision)
    graph = {"decoder_version": fast_vae_decode.VERSION} if engine == "graph" else {}
    return {"engine": engine, "dtype": PRECISION_DTYPES[precision] if engine == "graph" else precision,
            "batch_size": batch_size, "decode_batch": cfg.eval.decode_batch,
            "device": device_name(torch.device("cuda" if cuda else "cpu")), **graph}


def sampling_trainer(cfg: DictConfig) -> L.Trainer:
    """The predict-only Trainer of evaluation: cfg.trainer's devices / strategy / precision, no
    logger, no progress bar of its own (the sampler counts samples)."""
    t = cfg.trainer
    return L.Trainer(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
                     precision=resolve_precision(t), logger=False, enable_checkpointing=False,
                     enable_model_summary=False, enable_progress_bar=False)


def generate_samples(module: L.LightningModule, cfg: DictConfig, num_samples: int, out: Path, batch_size: int,
                     settings: dict, png_dir: str | Path | None = None, progress: Progress | None = None,
                     speed: dict[str, float] | None = None,
                     observe: Callable[[np.ndarray], None] | None = None) -> Path | None:
    """Class-balanced samples (label i % num_classes, noise from (cfg.seed, i)) of a GeneratorModule
    into the ADM .npz ``out`` via resumable shards; the path on rank 0, None on other ranks.
    ``settings`` plus ``engine_settings`` are what the shards are stored with. ``progress`` /
    ``speed`` / ``observe``: see ``sample_to_store``. Call on every rank under DDP."""
    engine = engine_settings(module, cfg, batch_size)
    store = SampleStore(out, num_samples, cfg.eval.shard_size, {**settings, **engine})
    return sample_to_store(sampling_trainer(cfg), module, store, SamplingConfig(**cfg.eval.sampling), cfg.seed,
                           module.num_classes, batch_size, cfg.eval.decode_batch, png_dir, engine=engine["engine"],
                           dtype=engine["dtype"], progress=progress, speed=speed, observe=observe)


class GridSampler(L.LightningModule):
    """Predict-only: a GeneratorModule's sample grid (``sample_grid_labels()``) through the
    evaluation's engine (``eval.engine`` resolved on cfg.trainer's device and precision): sample i
    has label i % grid columns and noise from (cfg.seed, i), generated as one micro-batch of the
    grid. With at most 16 classes its labels are the evaluation's, so the grid shows the evaluation's
    first samples (bit-identical where the engine is batch-invariant: the eager engine in fp32)."""

    def __init__(self, module: L.LightningModule, cfg: DictConfig):
        super().__init__()
        self.module, self.cfg = module, cfg

    @torch.inference_mode()
    def predict_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        module, cfg = self.module, self.cfg
        count = len(module.sample_grid_labels())
        engine = engine_settings(module, cfg, count)
        generation = GenerationEngine.for_evaluation(
            module.paradigm, module.tokenizer, SamplingConfig(**cfg.eval.sampling), count,
            min(count, cfg.eval.decode_batch), engine["engine"], engine["dtype"])
        return generation.decode(generation.sample_codes(0, count, cfg.seed, module.grid_columns)).cpu()


def engine_grid(module: L.LightningModule, cfg: DictConfig) -> Tensor:
    """uint8 images (n, 3, [T,] H, W) of ``GridSampler`` on one device of cfg.trainer's kind."""
    (images,) = sampling_trainer(cfg).predict(GridSampler(module, cfg), DataLoader([0]))
    return images


def first_samples(path: Path, count: int) -> Tensor:
    """The first ``count`` samples of an .npz as uint8 (count, 3, H, W), or (count, 3, T, H, W) for clips."""
    batch = np.ascontiguousarray(next(iter_samples(path, count)))
    return torch.from_numpy(batch).movedim(-1, 1)
