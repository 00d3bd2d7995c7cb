"""Quality evaluation of a generator.

``nar-bench evaluate <config> --ckpt <official file | .ckpt>`` (``evaluate_checkpoint``): the number a
paper would print. N class-balanced samples (label i % classes, noise from (seed, i), so identical for
any batch size and device count) go through ``Trainer.predict`` into resumable ADM-format shards
(each rank writes the shards it generates; rank 0 assembles the .npz), then ADM's metrics against
``eval.reference`` (FID, sFID, IS, precision, recall), one MLflow run and <output_dir>/<name>/eval.json
(results/runs/<name>/ by default).

``evaluate`` (sweeps, ``make ablation-heads``): the same shards and seeds for eval.num_samples
samples; ADM's metrics when ``eval.reference`` is set, else torch-fidelity's FID / IS / KID /
precision-recall against dataset images (+ class consistency on the synthetic shapes).

``generate_samples`` keeps the in-memory path (arbitrary labels, gathered onto rank 0).
"""

from __future__ import annotations

import argparse
import json
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
from nar_bench.config import merge
from nar_bench.errors import NarBenchError
from nar_bench.images import save_grid
from nar_bench.lit.data import GeneratorDataModule
from nar_bench.lit.module import GeneratorModule
from nar_bench.lit.shard_sampling import sample_to_store
from nar_bench.lit.trainer import check_inputs, resolve_precision, uses_gpu
from nar_bench.metrics import DomainClassifierSpec, class_consistency, domain_classifier, evaluate_samples
from nar_bench.metrics.adm import InceptionFeatures, Reference, check_same_size, evaluate_npz, load_reference
from nar_bench.metrics.adm_npz import IMAGES_KEY, LABELS_KEY, atomic_path, iter_images, sha256_file
from nar_bench.metrics.sample_store import SampleStore
from nar_bench.nn.noise import RowNoise
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.registry import DATASETS
from nar_bench.tracking.mlflow import log_artifact, make_logger
from nar_bench.tracking.provenance import provenance

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

    Every sample draws its own noise from (seed, its index) (``RowNoise``), so the samples do not
    depend on the batch size, on which rank generates them or in which order."""

    def __init__(self, module: GeneratorModule, sampling: SamplingConfig, seed: int):
        super().__init__()
        self.module, self.sampling, self.seed = module, sampling, seed

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        index, labels = batch
        images = self.module.sample_images(labels, self.sampling, RowNoise.for_samples(self.seed, index))
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


def sampling_trainer(cfg: DictConfig) -> L.Trainer:
    """The predict-only Trainer of evaluation: cfg.trainer's devices / strategy / precision, no logger."""
    t = cfg.trainer
    return L.Trainer(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
                     precision=resolve_precision(t), logger=False, enable_checkpointing=False,
                     enable_model_summary=False)


def sample_settings(cfg: DictConfig, num_classes: int, **extra) -> dict:
    """What decides the samples (recorded with results; resuming shards requires the same)."""
    return {"sampling": OmegaConf.to_container(cfg.eval.sampling, resolve=True), "seed": cfg.seed,
            "num_classes": num_classes, "decode_batch": cfg.eval.decode_batch, "paradigm": cfg.model.paradigm,
            **extra}


def generate_npz(module: GeneratorModule, cfg: DictConfig, num_samples: int, out: Path, batch_size: int,
                 settings: dict, png_dir: str | Path | None = None) -> Path | None:
    """Class-balanced samples (label i % num_classes, noise from (cfg.seed, i)) into the ADM .npz
    ``out`` via resumable shards; the path on rank 0, None on other ranks."""
    store = SampleStore(out, num_samples, cfg.eval.shard_size, settings)
    return sample_to_store(sampling_trainer(cfg), module, store, SamplingConfig(**cfg.eval.sampling), cfg.seed,
                           module.num_classes, batch_size, cfg.eval.decode_batch, png_dir)


def inception_device(cfg: DictConfig) -> str:
    return "cuda" if uses_gpu(cfg.trainer) else "cpu"


def inception_weights(cfg: DictConfig) -> str | None:
    return cfg.eval.extractor_options.get("weights_path")


def check_adm_inputs(cfg: DictConfig) -> Reference:
    """Fails before generating on a missing / incomplete reference batch, missing Inception weights,
    or data.image_size unlike the reference's images."""
    reference = load_reference(cfg.eval.reference)
    InceptionFeatures(inception_weights(cfg))  # raises on missing or unreadable weights
    size = cfg.data.image_size
    check_same_size((0, size, size, 3), reference)
    return reference


def npz_metrics(path: Path, cfg: DictConfig) -> tuple[dict[str, float], pd.DataFrame | None]:
    """Metrics of the samples in ``path``: ADM's (fid, sfid, is, is_std, precision, recall) against
    ``eval.reference`` when set, else torch-fidelity's against the dataset images (``quality_metrics``)."""
    if cfg.eval.reference:
        return evaluate_npz(path, cfg.eval.reference, inception_weights(cfg), batch_size=cfg.eval.batch_size,
                            device=inception_device(cfg)), None
    with np.load(path) as npz:
        images, labels = torch.from_numpy(npz[IMAGES_KEY]).permute(0, 3, 1, 2), torch.from_numpy(npz[LABELS_KEY])
    return quality_metrics(images, labels, cfg)


def grid_images(path: Path, count: int) -> Tensor:
    """The first ``count`` images of an ADM .npz as (count, 3, H, W) uint8."""
    batch = next(iter_images(path, count))
    return torch.from_numpy(batch.copy()).permute(0, 3, 1, 2)


def evaluate(module: GeneratorModule, cfg: DictConfig, num_samples: int | None = None,
             batch_size: int | None = None, logger=None, out_dir: str | Path | None = None) -> dict[str, float]:
    """Generates ``num_samples`` (default eval.num_samples) class-balanced samples with
    cfg.eval.sampling, ``batch_size`` (default eval.batch_size) per device and batch, and returns
    their metrics: with ``eval.reference`` ADM's fid, sfid, is, is_std, precision, recall; else
    fid, is, is_std, kid, kid_std, precision, recall, f_score (those of eval.metrics) and
    class_accuracy (domain extractor); plus num_samples, generate_seconds.

    The samples go through the same shards and per-sample seeds as ``nar-bench evaluate``
    (``out_dir``/samples.npz when ``out_dir`` is given). With an MLflow ``logger`` (Lightning
    MLFlowLogger) the metrics are logged as ``eval/<name>``, with the artifacts eval_samples.png and
    per_class_accuracy.csv. Must be called on every rank under DDP; ranks other than 0 return {}.
    """
    num_samples = num_samples or cfg.eval.num_samples
    if cfg.eval.reference:
        check_adm_inputs(cfg)
    else:
        extractor_options(cfg)  # fail on a bad extractor setting before generating anything
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out_dir or tmp)
        start = time.perf_counter()
        path = generate_npz(module, cfg, num_samples, folder / "samples.npz", batch_size or cfg.eval.batch_size,
                            sample_settings(cfg, module.num_classes))
        if path is None:
            return {}
        seconds = time.perf_counter() - start
        metrics, per_class = npz_metrics(path, cfg)
        metrics.update(num_samples=float(num_samples), generate_seconds=seconds)
        rows = min(cfg.eval.samples_per_class, num_samples // min(module.num_classes, 16))
        write_artifacts(grid_images(path, min(module.num_classes, 16) * max(rows, 1)), per_class, folder,
                        module.num_classes, max(rows, 1), logger)
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


# --- nar-bench evaluate: the number a paper would print --------------------------------------------
def load_generator(cfg: DictConfig, ckpt: str | Path, num_classes: int | None = None) -> GeneratorModule:
    """A nar-bench Lightning ``.ckpt`` (architecture from the checkpoint) or an official weights file
    loaded into the paradigm ``cfg`` describes (as ``model.checkpoint``); ``num_classes`` defaults to
    the configured dataset's."""
    path = Path(ckpt).expanduser()
    if not path.is_file():
        raise NarBenchError(f"checkpoint '{path}' not found; pass a nar-bench .ckpt or an official weights file")
    if path.suffix == ".ckpt":
        return GeneratorModule.load_from_checkpoint(path, map_location="cpu")
    cfg = merge(cfg, {"model": {"checkpoint": str(path)}}, source="--ckpt")
    check_inputs(cfg)
    return GeneratorModule(cfg, num_classes or GeneratorDataModule(cfg.data).num_classes)


def evaluate_checkpoint(cfg: DictConfig, ckpt: str | Path, num_samples: int = 50_000, name: str | None = None,
                        out: str | Path | None = None, png_dir: str | Path | None = None,
                        num_classes: int | None = None, command: str | None = None) -> dict | None:
    """Samples ``num_samples`` class-balanced images from ``ckpt`` into an ADM .npz (resumable
    shards), scores them against ``eval.reference`` with ADM's metrics, logs one MLflow run and
    writes ``<output_dir>/<name>/eval.json``. Returns that record on rank 0, None on other ranks."""
    if not cfg.eval.reference:
        raise NarBenchError("eval.reference is not set: pass eval.reference=<ADM reference batch .npz> (e.g. "
                            "VIRTUAL_imagenet256_labeled.npz, or one built with `nar-bench reference`)")
    reference = check_adm_inputs(cfg)
    module = load_generator(cfg, ckpt, num_classes)
    name = name or cfg.tracking.run_name or f"eval-{cfg.model.paradigm}-{Path(ckpt).stem}"
    results = Path(cfg.output_dir) / name.replace("/", "_")  # results/runs/<name> (git-ignored) by default
    out = Path(out) if out else results / "samples.npz"
    ckpt_sha = sha256_file(ckpt)
    settings = sample_settings(cfg, module.num_classes, checkpoint_sha256=ckpt_sha)
    start = time.perf_counter()
    path = generate_npz(module, cfg, num_samples, out, cfg.eval.batch_size, settings, png_dir)
    if path is None:
        return None
    seconds = time.perf_counter() - start
    metrics = evaluate_npz(path, reference.path, inception_weights(cfg), batch_size=cfg.eval.batch_size,
                           device=inception_device(cfg))
    record = {
        "name": name, "metrics": metrics, "num_samples": num_samples, "seed": cfg.seed,
        "sampling": settings["sampling"], "settings": settings, "generate_seconds": seconds,
        "checkpoint": {"path": str(Path(ckpt).resolve()), "sha256": ckpt_sha},
        "reference": {"path": str(reference.path.resolve()), "sha256": reference.sha256},
        "samples": str(path.resolve()),
        "provenance": provenance(command, inception_device(cfg)),
    }
    logger = make_logger(cfg.tracking, name)
    logger.log_hyperparams({"num_samples": num_samples, "seed": cfg.seed, "sampling": settings["sampling"],
                            "checkpoint": record["checkpoint"], "reference": record["reference"],
                            "paradigm": cfg.model.paradigm})
    logger.log_metrics({f"eval/{key}": value for key, value in metrics.items()})
    results.mkdir(parents=True, exist_ok=True)
    nrow = min(module.num_classes, 16)
    grid = save_grid(grid_images(path, nrow * max(1, min(cfg.eval.samples_per_class, num_samples // nrow))),
                     results / "eval_samples.png", nrow)
    record["mlflow_run_id"] = logger.run_id
    with atomic_path(results / "eval.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    for artifact in (grid, results / "eval.json"):
        log_artifact(logger, artifact)
    logger.finalize("success")
    return record


def main(args: argparse.Namespace) -> None:
    from nar_bench.config import load_config

    record = evaluate_checkpoint(load_config(args.config, args.overrides), args.ckpt, args.num_samples, args.name,
                                 args.out, args.png_dir, args.num_classes, getattr(args, "command_line", None))
    if record:
        print(" ".join(f"{k}={v:.4f}" for k, v in record["metrics"].items()))
        print(f"samples: {record['samples']}")
