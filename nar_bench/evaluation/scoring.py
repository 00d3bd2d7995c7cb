"""Scorers: a sample file -> features -> metrics against a reference. One per protocol:

- ``ADMScorer`` (``eval.reference`` set, images): ADM's evaluator on torch-fidelity's InceptionV3
  against an ADM reference batch: fid, sfid, is (+ is_std), precision, recall. The paper number.
- ``DatasetScorer`` (images, no ``eval.reference``): torch-fidelity's FID / IS / KID /
  precision-recall (``eval.metrics``) against ``eval.reference_size`` dataset images, with the
  domain classifier's features on the synthetic shapes (+ class accuracy) or Inception's.
- ``VideoScorer`` (``data.frames`` set): FVD against as many dataset clips, on the moving-shapes
  domain classifier's features (``eval.extractor=video_domain``) or I3D's (``i3d``, local weights).

``scorer_for(cfg)`` picks one. ``check()`` fails on bad inputs before any sample is generated.
Every scorer returns only names the metric registry knows (``nar_bench.metrics.registry``).
"""

from __future__ import annotations

import contextlib
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset, Subset

import nar_bench.data  # noqa: F401  (registers the datasets)
from nar_bench.errors import NarBenchError
from nar_bench.images import to_uint8
from nar_bench.metrics import DomainClassifierSpec, class_consistency, domain_classifier, evaluate_samples
from nar_bench.metrics.adm import (
    InceptionFeatures,
    Reference,
    StreamedFeatures,
    adm_protocol,
    check_same_size,
    evaluate_npz,
    load_reference,
)
from nar_bench.metrics.adm_npz import IMAGES_KEY, LABELS_KEY, iter_samples, samples_header
from nar_bench.metrics.cache import cache_root
from nar_bench.metrics.fvd import VIDEO_EXTRACTORS, batched_features, frechet_distance
from nar_bench.metrics.registry import check_reported
from nar_bench.metrics.sample_store import settings_path
from nar_bench.registry import DATASETS, FEATURE_EXTRACTORS, PARADIGMS


def device(cfg: DictConfig) -> str:
    """Where the feature extractor runs: the GPU when the evaluation generates on one."""
    from nar_bench.lit.trainer import uses_gpu

    return "cuda" if uses_gpu(cfg.trainer) else "cpu"


def reference_data(cfg: DictConfig) -> Dataset:
    """The real images (or clips) the samples are compared with: ``eval.reference_size`` items of
    split ``eval.reference_split`` of ``eval.reference_data`` (default: the training dataset)."""
    ev = cfg.eval
    data = OmegaConf.merge(cfg.data, {
        "name": ev.reference_data or cfg.data.name, "root": ev.reference_root or cfg.data.root,
        "num_train": ev.reference_size, "num_val": ev.reference_size,
    })
    dataset = DATASETS[data.name](data, ev.reference_split)
    return Subset(dataset, range(ev.reference_size)) if len(dataset) > ev.reference_size else dataset


def extractor_options(cfg: DictConfig) -> dict:
    """``eval.extractor_options``; the domain classifiers also get the data settings they model."""
    options = OmegaConf.to_container(cfg.eval.extractor_options, resolve=True)
    d = cfg.data
    if cfg.eval.extractor == "domain":
        return {"image_size": d.image_size, "grid": d.grid_size, "seed": d.seed, **options}
    if cfg.eval.extractor == "video_domain":
        return {"frames": d.frames, "image_size": d.image_size, "grid": d.grid_size, "seed": d.seed, **options}
    return options


class Scorer(ABC):
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.feature_seconds: float | None = None  # of the samples' features, where a scorer times them apart

    @abstractmethod
    def check(self) -> None:
        """Raises NarBenchError on anything that would fail after generating."""

    @abstractmethod
    def metrics(self, samples: Path) -> tuple[dict[str, float], pd.DataFrame | None]:
        """(metrics, per-class table or None) of the samples .npz."""

    @abstractmethod
    def protocol(self) -> dict:
        """What defines the numbers (recorded in eval.json): protocol name, features, reference."""

    def score(self, samples: Path) -> tuple[dict[str, float], pd.DataFrame | None]:
        metrics, per_class = self.metrics(samples)
        check_reported(metrics, type(self).__name__)
        return metrics, per_class

    @contextlib.contextmanager
    def streaming(self) -> Iterator[Callable[[np.ndarray], None] | None]:
        """Around generating and scoring one sample file: an observer for its images as they are
        assembled (``SampleStore.assemble``), or None where the scorer reads the file."""
        yield None


class ADMScorer(Scorer):
    streamed: StreamedFeatures | None = None  # inside ``streaming``

    def check(self) -> None:
        if self.cfg.data.frames is not None:
            raise NarBenchError("eval.reference is an ADM batch of images, but this config generates video "
                                "(data.frames is set): drop eval.reference; video is scored with FVD")
        InceptionFeatures(self.weights)  # raises on missing or unreadable weights
        size = self.cfg.data.image_size
        check_same_size((0, size, size, 3), self.reference)

    @cached_property
    def reference(self) -> Reference:
        """The reference batch, read and hashed once (ImageNet's is ~1.5 GB)."""
        return load_reference(self.cfg.eval.reference)

    @property
    def weights(self) -> str | None:
        return self.cfg.eval.extractor_options.get("weights_path")

    @contextlib.contextmanager
    def streaming(self) -> Iterator[Callable[[np.ndarray], None]]:
        """The samples' Inception features are extracted on a worker thread as the shards are
        assembled into the file (``StreamedFeatures``): the assembly's disk writes and the feature
        extraction overlap, and the file is not read again. Features equal the file's."""
        self.streamed = StreamedFeatures(self.weights, device(self.cfg), self.cfg.eval.batch_size)
        try:
            yield self.streamed.add
        finally:
            self.streamed.close()
            self.streamed = None

    def metrics(self, samples: Path) -> tuple[dict[str, float], None]:
        timings: dict[str, float] = {}
        streamed = self.streamed.result() if self.streamed is not None else None
        metrics = evaluate_npz(samples, self.reference, self.weights, batch_size=self.cfg.eval.batch_size,
                               device=device(self.cfg), timings=timings, features_cache=self.features_cache(samples),
                               features=streamed, extractor=self.streamed.extractor if streamed is not None else None)
        self.feature_seconds = self.streamed.seconds if streamed is not None else timings["feature_s"]
        return metrics, None

    def features_cache(self, samples: Path) -> tuple[Path, str] | None:
        """(file beside it, key) for the Inception features of an assembled sample file, the key
        being its recorded settings; None for a file without settings (one given by hand)."""
        settings = settings_path(samples)
        if not settings.is_file():
            return None
        return samples.with_name(samples.name + ".features.pt"), hashlib.sha256(settings.read_bytes()).hexdigest()

    def protocol(self) -> dict:
        return {"name": "adm", **adm_protocol(),
                "reference": {"path": str(self.reference.path.resolve()), "sha256": self.reference.sha256}}


class DatasetScorer(Scorer):
    def check(self) -> None:
        ev = self.cfg.eval
        if ev.extractor not in FEATURE_EXTRACTORS or ev.extractor in VIDEO_EXTRACTORS:
            images = sorted(set(FEATURE_EXTRACTORS) - set(VIDEO_EXTRACTORS))
            raise NarBenchError(f"eval.extractor '{ev.extractor}' is not an image feature extractor; choose one of: "
                                f"{', '.join(images)}")
        if ev.extractor == "domain" and self.cfg.data.name != "shapes":
            raise NarBenchError(f"eval.extractor=domain is the classifier of the synthetic shapes data, but data.name="
                                f"'{self.cfg.data.name}'; use eval.extractor=inception (see "
                                "experiments/ablation_heads.yaml)")
        if ev.extractor == "inception":
            from nar_bench.checkpoints import load_file

            extractor = FEATURE_EXTRACTORS["inception"](cache_root(), **extractor_options(self.cfg))  # missing file
            load_file(extractor.weights_path, download="replace it with the torch-fidelity InceptionV3 weights "
                                                       "(pt_inception-2015-12-05-6726825d.pth)")
        check_reference_folder(self.cfg)

    def metrics(self, samples: Path) -> tuple[dict[str, float], pd.DataFrame | None]:
        ev = self.cfg.eval
        with np.load(samples) as npz:
            images, labels = torch.from_numpy(npz[IMAGES_KEY]).permute(0, 3, 1, 2), torch.from_numpy(npz[LABELS_KEY])
        options = extractor_options(self.cfg)
        cuda = device(self.cfg) == "cuda"
        metrics = evaluate_samples(images, reference_data(self.cfg), extractor=ev.extractor, metrics=list(ev.metrics),
                                   extractor_options=options, batch_size=ev.batch_size, cuda=cuda)
        if ev.extractor != "domain":
            return metrics, None
        classifier = domain_classifier(DomainClassifierSpec.from_options(options)).to(device(self.cfg))
        consistency = class_consistency(images, labels, classifier)
        return {**metrics, "class_accuracy": consistency.accuracy}, consistency.per_class

    def protocol(self) -> dict:
        ev = self.cfg.eval
        return {"name": "torch-fidelity", "features": ev.extractor, "metrics": list(ev.metrics),
                "reference": reference_description(self.cfg)}


class VideoScorer(Scorer):
    def check(self) -> None:
        if self.cfg.eval.extractor not in VIDEO_EXTRACTORS:
            raise NarBenchError(f"this config generates video (data.frames={self.cfg.data.frames}) but "
                                f"eval.extractor='{self.cfg.eval.extractor}' is an image extractor: set "
                                f"eval.extractor to one of {', '.join(VIDEO_EXTRACTORS)} (FVD)")
        if self.cfg.eval.extractor == "i3d":
            self.extractor()  # raises on missing weights
        check_reference_folder(self.cfg)

    def extractor(self) -> torch.nn.Module:
        return FEATURE_EXTRACTORS[self.cfg.eval.extractor](cache_root(), **extractor_options(self.cfg))

    def metrics(self, samples: Path) -> tuple[dict[str, float], None]:
        extractor = self.extractor().to(device(self.cfg))
        batch = self.cfg.eval.batch_size
        shape = samples_header(samples, "sample clips")
        if len(shape) != 5:
            raise NarBenchError(f"'{samples}' holds images {shape}, not clips (N, T, H, W, 3): FVD scores video")
        fake = torch.cat([batched_features(extractor, torch.from_numpy(np.ascontiguousarray(c)).movedim(-1, 1), batch)
                          for c in iter_samples(samples, batch, "sample clips")])  # streamed: clips stay on disk
        clips = reference_data(self.cfg)
        real = to_uint8(torch.stack([clips[i][0] for i in range(len(clips))]))
        return {"fvd": frechet_distance(batched_features(extractor, real, batch), fake)}, None

    def protocol(self) -> dict:
        return {"name": "fvd", "features": self.cfg.eval.extractor, "reference": reference_description(self.cfg)}


def check_reference_folder(cfg: DictConfig) -> None:
    ev = cfg.eval
    if (ev.reference_data or cfg.data.name) == "imagefolder":
        root = ev.reference_root or cfg.data.root
        if not root or not Path(root).is_dir():
            raise NarBenchError(f"eval reference images: folder '{root}' not found; set eval.reference_root "
                                "(or data.root) to the image folder the samples are compared with")


def reference_description(cfg: DictConfig) -> dict:
    ev = cfg.eval
    return {"data": ev.reference_data or cfg.data.name, "root": ev.reference_root or cfg.data.root,
            "split": ev.reference_split, "size": ev.reference_size}


def scorer_for(cfg: DictConfig) -> Scorer:
    """The scorer of ``cfg``: video -> FVD; images with ``eval.reference`` -> ADM; else dataset images."""
    if cfg.eval.reference:
        return ADMScorer(cfg)
    return VideoScorer(cfg) if cfg.data.frames is not None else DatasetScorer(cfg)


def check_eval_inputs(cfg: DictConfig) -> None:
    """What evaluation will need, checked before training or generating: an engine that can run
    here (``eval.engine``), a known feature extractor that fits the data, readable weights, the
    reference batch or the reference images' folder."""
    from nar_bench.lit.trainer import resolve_precision, uses_gpu
    from nar_bench.paradigms.generation import resolve_engine

    trainer = cfg.trainer
    resolve_engine(cfg.eval.engine, PARADIGMS[cfg.model.paradigm], uses_gpu(trainer), resolve_precision(trainer))
    scorer_for(cfg).check()

