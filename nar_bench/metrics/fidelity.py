"""FID, IS, KID and precision/recall of in-memory samples against a reference set.

All four come from ``torch_fidelity.calculate_metrics`` (not re-implemented here); this module
only turns our tensors and datasets into what it expects, chooses the feature extractor and keeps
reference features/statistics in torch-fidelity's file cache under ``<cache root>/fidelity``.

Feature extractors (``nar_bench.registry.FEATURE_EXTRACTORS``):

- ``domain``: the shapes classifier of :mod:`nar_bench.metrics.domain`, trained once and cached.
  Options: the fields of :class:`DomainClassifierSpec` (image_size, grid, seed, steps, ...).
- ``inception``: torch-fidelity's ``inception-v3-compat`` (the standard TF-ported InceptionV3 of
  FID papers) from a LOCAL weights file: option ``weights_path``, else ``$NAR_BENCH_INCEPTION_WEIGHTS``,
  else ``<cache root>/weights/<official file name>``. Never downloaded: a missing file is an error
  that says where to get it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch_fidelity  # importable on CPU-only installs thanks to nar_bench/__init__ (see _torchvision_compat)
from torch import Tensor
from torch.utils.data import Dataset, Subset

from nar_bench.data.imagefolder import ImageFolderDataset
from nar_bench.data.shapes import ShapesDataset
from nar_bench.errors import NarBenchError
from nar_bench.images import to_uint8
from nar_bench.metrics.cache import cache_root
from nar_bench.metrics.domain import (
    TORCH_FIDELITY_NAME,
    DomainClassifierSpec,
    domain_classifier_path,
)
from nar_bench.registry import FEATURE_EXTRACTORS

URL_INCEPTION_V3 = torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3  # what torch-fidelity would fetch

INCEPTION_WEIGHTS_ENV = "NAR_BENCH_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_FILE = URL_INCEPTION_V3.rsplit("/", 1)[-1]  # weights-inception-2015-12-05-6726825d.pth
METRICS = ("fid", "isc", "kid", "prc")  # torch-fidelity's names: FID, Inception Score, KID, precision/recall
# torch-fidelity result keys -> ours; "inception" would be wrong with the domain extractor
RESULT_KEYS = {
    torch_fidelity.KEY_METRIC_FID: "fid",
    torch_fidelity.KEY_METRIC_ISC_MEAN: "is",
    torch_fidelity.KEY_METRIC_ISC_STD: "is_std",
    torch_fidelity.KEY_METRIC_KID_MEAN: "kid",
    torch_fidelity.KEY_METRIC_KID_STD: "kid_std",
    torch_fidelity.KEY_METRIC_PRECISION: "precision",
    torch_fidelity.KEY_METRIC_RECALL: "recall",
    torch_fidelity.KEY_METRIC_F_SCORE: "f_score",
}


@dataclass(frozen=True)
class FidelityExtractor:
    """A torch-fidelity feature extractor plus the local weights file it runs with.
    ``tag`` names those weights in reference cache entries."""

    name: str
    weights_path: Path
    tag: str


@FEATURE_EXTRACTORS.register("inception")
def inception_extractor(root: Path, **options: Any) -> FidelityExtractor:
    unknown = sorted(set(options) - {"weights_path"})
    if unknown:
        raise NarBenchError(f"unknown inception extractor option(s) {unknown}; valid: weights_path")
    weights_path = options.get("weights_path") or os.environ.get(INCEPTION_WEIGHTS_ENV)
    path = Path(weights_path or root / "weights" / INCEPTION_WEIGHTS_FILE)
    if not path.is_file():
        raise NarBenchError(
            f"InceptionV3 weights not found at '{path}' (nar-bench never downloads them): on a machine with "
            f"internet run `curl -L --create-dirs -o {path} {URL_INCEPTION_V3}` and copy the file there, or point "
            f"${INCEPTION_WEIGHTS_ENV} (or the extractor option weights_path) at an existing copy"
        )
    return FidelityExtractor("inception-v3-compat", path, f"inception-{path.stem}")


@FEATURE_EXTRACTORS.register("domain")
def domain_extractor(root: Path, **options: Any) -> FidelityExtractor:
    spec = DomainClassifierSpec.from_options(options)
    return FidelityExtractor(TORCH_FIDELITY_NAME, domain_classifier_path(spec, root), spec.key())


class Uint8Images(Dataset):
    """torch-fidelity input: item i is a (3, H, W) uint8 tensor.

    Wraps a (N, 3, H, W) uint8 tensor, or a dataset whose items are images or (image, label)
    with images uint8 or float in [-1, 1] (the convention of nar-bench datasets)."""

    def __init__(self, source: Tensor | Dataset):
        if isinstance(source, Tensor):
            if source.dtype != torch.uint8 or source.dim() != 4 or source.shape[1] != 3:
                raise NarBenchError(f"images must be a (N, 3, H, W) uint8 tensor, got {source.dtype} "
                                    f"{tuple(source.shape)}; convert with nar_bench.metrics.to_uint8")
            source = source.cpu()
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Tensor:
        item = self.source[index]
        image = item[0] if isinstance(item, (tuple, list)) else item
        return image if image.dtype == torch.uint8 else to_uint8(image)


def reference_cache_id(reference: Tensor | Dataset) -> str | None:
    """Deterministic name of a reference set for the feature cache: a content hash for tensors,
    the generating parameters for the shapes dataset, the file listing and crop settings for an
    image folder, the parent's name and the indices for a subset of those; None (no caching) for
    other datasets."""
    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:16]

    if isinstance(reference, Tensor):
        return "tensor-" + digest(reference.cpu().contiguous().numpy().tobytes())
    if isinstance(reference, ShapesDataset):
        split = {v: k for k, v in reference.splits.items()}[reference.split_id]
        return f"shapes-{split}-n{reference.size}-{reference.image_size}px-g{reference.grid}-seed{reference.seed}"
    if isinstance(reference, ImageFolderDataset):
        listing = json.dumps([reference.upscale_small, reference.samples]).encode()
        return f"imagefolder-n{len(reference)}-{reference.image_size}px-{digest(listing)}"
    if isinstance(reference, Subset) and (parent := reference_cache_id(reference.dataset)):
        return f"{parent}-subset{len(reference)}-{digest(json.dumps(list(reference.indices)).encode())}"
    return None


def evaluate_samples(
    samples: Tensor,
    reference: Tensor | Dataset,
    extractor: str = "domain",
    metrics: Sequence[str] = METRICS,
    extractor_options: Mapping[str, Any] | None = None,
    reference_id: str | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    cuda: bool | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """Quality metrics of ``samples`` (N, 3, H, W) uint8 against ``reference``.

    reference: (M, 3, H, W) uint8 tensor or a dataset (see :class:`Uint8Images`); its features
        and FID statistics are cached under ``reference_id`` (default :func:`reference_cache_id`).
    metrics: subset of ``METRICS``. Returns a flat dict: fid, is, is_std, kid, kid_std,
    precision, recall, f_score (those requested). Class consistency of the synthetic data is
    :func:`nar_bench.metrics.domain.class_consistency`.
    cuda: run the extractor on the current CUDA device (default: when one is available).
    """
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or not metrics:
        raise NarBenchError(f"unknown metric(s) {unknown or '(none given)'}; choose from: {', '.join(METRICS)}")
    root = cache_root(cache_dir)
    fe = FEATURE_EXTRACTORS[extractor](root, **dict(extractor_options or {}))
    samples_ds, reference_ds = Uint8Images(samples), Uint8Images(reference)
    if samples_ds[0].shape != reference_ds[0].shape:
        raise NarBenchError(f"samples are {tuple(samples_ds[0].shape)} but the reference images are "
                            f"{tuple(reference_ds[0].shape)}; compare images of the same size")
    reference_id = reference_id or reference_cache_id(reference)
    cuda = torch.cuda.is_available() if cuda is None else cuda
    raw = torch_fidelity.calculate_metrics(
        input1=samples_ds,
        input2=reference_ds,
        input2_cache_name=f"{reference_id}-{fe.tag}" if reference_id else None,
        cache_root=str(root / "fidelity"),
        feature_extractor=fe.name,
        feature_extractor_weights_path=str(fe.weights_path),
        kid_subset_size=min(1000, len(samples_ds), len(reference_ds)),
        # torch-fidelity ties DataLoader workers to this flag; in-memory inputs gain nothing from workers
        save_cpu_ram=True,
        batch_size=batch_size,
        cuda=cuda,
        verbose=verbose,
        **{metric: True for metric in metrics},
    )
    return {RESULT_KEYS[key]: float(value) for key, value in raw.items()}
