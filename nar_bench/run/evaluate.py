"""Quality evaluation of a trained generator: class-balanced samples -> FID / IS / KID / precision-
recall (+ class consistency on the synthetic shapes) -> MLflow metrics and artifacts.

Generation runs through ``Trainer.predict`` so it scales like training: under DDP every rank
generates its share of the labels and the uint8 images are gathered once, onto rank 0, which
computes the metrics (torch-fidelity runs on one device). On one device it is a plain loop.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

import nar_bench.data  # noqa: F401  (registers the datasets)
from nar_bench.errors import NarBenchError
from nar_bench.images import save_grid
from nar_bench.lit.module import GeneratorModule
from nar_bench.lit.trainer import resolve_precision, uses_gpu
from nar_bench.metrics import DomainClassifierSpec, class_consistency, domain_classifier, evaluate_samples
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.registry import DATASETS
from nar_bench.tracking.mlflow import log_artifact

GATHER_CHUNK = 512  # images per all_gather call: bounds the extra GPU memory of the gather


def balanced_labels(num_samples: int, num_classes: int) -> Tensor:
    """(num_samples,) labels cycling through the classes: every class gets the same count (+-1)."""
    return torch.arange(num_samples) % num_classes


class LabelSet(Dataset):
    """Item i: (i, label i). The index travels with the label so gathered samples can be reordered."""

    def __init__(self, labels: Tensor):
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[int, Tensor]:
        return index, self.labels[index]


class SampleGenerator(L.LightningModule):
    """Predict-only view of a GeneratorModule: images for batches of (index, label).

    Each batch draws from its own generator seeded by (seed, index of its first sample), so the
    samples do not depend on which rank generates them or in which order."""

    def __init__(self, module: GeneratorModule, sampling: SamplingConfig, seed: int):
        super().__init__()
        self.module, self.sampling, self.seed = module, sampling, seed

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        index, labels = batch
        # mixed into 32 bits: CPU generators keep only the low 32 bits of a seed
        seed = np.random.SeedSequence([self.seed, int(index[0])]).generate_state(1)[0]
        generator = torch.Generator(self.device).manual_seed(int(seed))
        images = self.module.sample_images(labels, self.sampling, generator)
        return {"index": index.cpu(), "labels": labels.cpu(), "images": images.cpu()}


class GatherSamples(L.Callback):
    """Collects predict outputs (on CPU); at the end gathers every rank's samples onto rank 0 in
    label order: ``images`` (N, 3, H, W) uint8 and ``labels`` (N,) there, None on other ranks."""

    def __init__(self):
        self.parts: list[dict[str, Tensor]] = []
        self.images: Tensor | None = None
        self.labels: Tensor | None = None

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.parts.append(outputs)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        local = {key: torch.cat([p[key] for p in self.parts]) for key in ("index", "labels", "images")}
        self.parts = []
        if trainer.world_size > 1:
            local = gather_to_rank_zero(trainer, pl_module, local)
        if trainer.is_global_zero:
            order = local["index"].argsort()
            self.images, self.labels = local["images"][order], local["labels"][order]


def gather_to_rank_zero(trainer: L.Trainer, pl_module: L.LightningModule, local: dict[str, Tensor]
                        ) -> dict[str, Tensor]:
    """Every rank's tensors concatenated (on CPU, rank 0 only; others get empty results).

    Ranks may hold different counts (predict splits without padding): each pads to the largest
    count with index -1, the padding is dropped after the gather. Chunked so that no rank ever
    holds all images on the GPU."""
    count = torch.tensor(len(local["index"]), device=pl_module.device)
    largest = int(pl_module.all_gather(count).max())
    pad = largest - len(local["index"])
    local = {key: torch.cat([t, t.new_full((pad, *t.shape[1:]), -1 if key == "index" else 0)])
             for key, t in local.items()}
    gathered: dict[str, list[Tensor]] = {key: [] for key in local}
    for start in range(0, largest, GATHER_CHUNK):
        chunk = {key: t[start:start + GATHER_CHUNK].to(pl_module.device) for key, t in local.items()}
        for key, value in pl_module.all_gather(chunk).items():  # (world, chunk, ...)
            if trainer.is_global_zero:
                gathered[key].append(value.flatten(0, 1).cpu())
    if not trainer.is_global_zero:
        return {key: t[:0] for key, t in local.items()}
    result = {key: torch.cat(parts) for key, parts in gathered.items()}
    keep = result["index"] >= 0
    return {key: t[keep] for key, t in result.items()}


def generate_samples(module: GeneratorModule, cfg: DictConfig, labels: Tensor, batch_size: int
                     ) -> tuple[Tensor | None, Tensor | None]:
    """labels (N,) -> (images (N, 3, H, W) uint8, labels (N,)) on rank 0, (None, None) elsewhere.
    Uses cfg.trainer's accelerator / devices / strategy / precision and cfg.eval.sampling."""
    t = cfg.trainer
    gather = GatherSamples()
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=resolve_precision(t), logger=False, callbacks=[gather], enable_checkpointing=False,
        enable_model_summary=False,
    )
    sampler = SampleGenerator(module, SamplingConfig(**cfg.eval.sampling), cfg.seed)
    trainer.predict(sampler, DataLoader(LabelSet(labels), batch_size=batch_size), return_predictions=False)
    return gather.images, gather.labels


def reference_images(cfg: DictConfig) -> Dataset:
    """The real images the samples are compared with: ``eval.reference_size`` images of split
    ``eval.reference_split`` of ``eval.reference_data`` (default: the training dataset)."""
    ev = cfg.eval
    data = OmegaConf.merge(cfg.data, {
        "name": ev.reference_data or cfg.data.name, "root": ev.reference_root or cfg.data.root,
        "num_train": ev.reference_size, "num_val": ev.reference_size,
    })
    dataset = DATASETS[data.name](data, ev.reference_split)
    return Subset(dataset, range(ev.reference_size)) if len(dataset) > ev.reference_size else dataset


def extractor_options(cfg: DictConfig) -> dict:
    """``eval.extractor_options``; the domain classifier also gets the shapes data settings."""
    options = OmegaConf.to_container(cfg.eval.extractor_options, resolve=True)
    if cfg.eval.extractor != "domain":
        return options
    if cfg.data.name != "shapes":
        raise NarBenchError(f"eval.extractor=domain is the classifier of the synthetic shapes data, but data.name="
                            f"'{cfg.data.name}'; use eval.extractor=inception (see experiments/ablation_heads.yaml)")
    return {"image_size": cfg.data.image_size, "grid": cfg.data.grid_size, "seed": cfg.data.seed, **options}


def quality_metrics(images: Tensor, labels: Tensor, cfg: DictConfig) -> tuple[dict[str, float], pd.DataFrame | None]:
    """FID / IS / KID / PR of images (N, 3, H, W) uint8 vs the reference; with the domain extractor
    also class consistency: ``class_accuracy`` and a per-class table (else None)."""
    ev = cfg.eval
    options = extractor_options(cfg)
    cuda = uses_gpu(cfg.trainer)
    metrics = evaluate_samples(images, reference_images(cfg), extractor=ev.extractor, metrics=list(ev.metrics),
                               extractor_options=options, batch_size=ev.batch_size, cuda=cuda)
    if ev.extractor != "domain":
        return metrics, None
    classifier = domain_classifier(DomainClassifierSpec.from_options(options)).to("cuda" if cuda else "cpu")
    consistency = class_consistency(images, labels, classifier)
    return {**metrics, "class_accuracy": consistency.accuracy}, consistency.per_class


def evaluate(module: GeneratorModule, cfg: DictConfig, num_samples: int | None = None,
             batch_size: int | None = None, logger=None, out_dir: str | Path | None = None) -> dict[str, float]:
    """Generates ``num_samples`` (default eval.num_samples) class-balanced samples with
    cfg.eval.sampling, ``batch_size`` (default eval.batch_size) per device and batch, and returns
    their metrics: fid, is, is_std, kid, kid_std, precision, recall, f_score (those of
    eval.metrics), class_accuracy (domain extractor), num_samples, generate_seconds.

    With an MLflow ``logger`` (Lightning MLFlowLogger) they are logged as ``eval/<name>``, with the
    artifacts eval_samples.png and per_class_accuracy.csv (also written to ``out_dir`` if given).
    Must be called on every rank under DDP; ranks other than 0 return {}.
    """
    num_samples = num_samples or cfg.eval.num_samples
    extractor_options(cfg)  # fail on a bad extractor setting before generating anything
    labels = balanced_labels(num_samples, module.num_classes)
    start = time.perf_counter()
    images, labels = generate_samples(module, cfg, labels, batch_size or cfg.eval.batch_size)
    if images is None:
        return {}
    seconds = time.perf_counter() - start
    metrics, per_class = quality_metrics(images, labels, cfg)
    metrics.update(num_samples=float(len(images)), generate_seconds=seconds)
    with tempfile.TemporaryDirectory() as tmp:
        write_artifacts(images, per_class, Path(out_dir or tmp), module.num_classes, cfg.eval.samples_per_class,
                        logger)
    if logger is not None:
        logger.log_metrics({f"eval/{key}": value for key, value in metrics.items()})
    return metrics


def write_artifacts(images: Tensor, per_class: pd.DataFrame | None, out_dir: Path, num_classes: int,
                    rows: int, logger=None) -> list[Path]:
    """Sample grid (``rows`` rows of the first classes; labels cycle, so columns are classes) and
    the per-class accuracy table; logged to the logger's MLflow run if given."""
    nrow = min(num_classes, 16)
    paths = [save_grid(images[: nrow * rows], out_dir / "eval_samples.png", nrow)]
    if per_class is not None:
        paths.append(out_dir / "per_class_accuracy.csv")
        per_class.to_csv(paths[-1])
    for path in paths:
        log_artifact(logger, path)
    return paths
