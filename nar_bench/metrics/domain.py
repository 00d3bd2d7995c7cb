"""Domain feature extractor for the synthetic shapes data.

InceptionV3 features say little about 64px palette images of coloured shapes, so metrics on the
synthetic default use a small CNN classifier trained on the shapes dataset itself (through
Lightning, a few hundred steps, seconds on CPU). It is trained once per dataset setting and cached
under ``<cache root>/domain/<key>.pt``; the file is self-describing and is what torch-fidelity's
``feature_extractor_weights_path`` points at. It provides

- ``features``: max-pooled conv features, for FID / KID / precision-recall;
- ``logits``: class logits, for the Inception Score and for class consistency (is a sample
  classified as the class it was generated for?).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch_fidelity  # importable on CPU-only installs thanks to nar_bench/__init__ (see _torchvision_compat)
from torch import Tensor, nn

from nar_bench.data.shapes import NUM_CLASSES, ShapesDataset, class_name
from nar_bench.errors import NarBenchError
from nar_bench.metrics.cache import cache_root
from nar_bench.metrics.classifier import ClassifierSpec, cached_classifier, fit_classifier, load_classifier

TORCH_FIDELITY_NAME = "nar-bench-shapes-cnn"


@dataclass(frozen=True)
class DomainClassifierSpec(ClassifierSpec):
    """Everything that determines the trained ShapesClassifier; its hash names the cache file.
    image_size / grid / seed are the shapes dataset settings (``data.*`` in the config)."""

    image_size: int = 64
    grid: int = 16
    seed: int = 0
    steps: int = 300
    batch_size: int = 64
    width: int = 32
    lr: float = 1e-2

    def label(self) -> str:
        return f"shapes{self.image_size}g{self.grid}s{self.seed}"


class ShapesClassifier(nn.Module):
    """(B, 3, S, S) images in [-1, 1] -> class logits (B, num_classes).

    Average-pools to the token grid first: shapes images are grid cells upsampled by nearest
    neighbour, so this is lossless for them and makes the net cheap. Global max pooling (not
    mean) keeps the evidence of the shape's outline, which is what separates the shape classes.
    Features are layer-normalised (see ``body``)."""

    def __init__(self, image_size: int, grid: int, width: int, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.image_size = image_size

        def conv(c_in: int, c_out: int, stride: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GELU())

        self.body = nn.Sequential(
            nn.AvgPool2d(image_size // grid),
            conv(3, width, 1), conv(width, 2 * width, 2), conv(2 * width, 4 * width, 2), conv(4 * width, 4 * width, 1),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
            # unit-scale features, like Inception's: KID's polynomial kernel (x.y/d + 1)^3 is only
            # well-conditioned for x.y/d ~ 1; raw max-pooled activations make it explode
            nn.LayerNorm(4 * width, elementwise_affine=False),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def features(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, 4 * width)."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise NarBenchError(
                f"domain classifier expects {self.image_size}px images, got {tuple(images.shape[-2:])}; "
                "set the domain extractor's image_size to the data's image_size"
            )
        return self.body(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


def train_domain_classifier(spec: DomainClassifierSpec) -> ShapesClassifier:
    """A freshly trained classifier; every step sees new images (the dataset is procedural)."""
    data = ShapesDataset(spec.steps * spec.batch_size, spec.image_size, spec.grid, spec.seed, split="train")
    return fit_classifier(lambda: ShapesClassifier(spec.image_size, spec.grid, spec.width), data, spec.steps,
                          spec.batch_size, spec.lr, spec.seed)


def domain_classifier_path(spec: DomainClassifierSpec, root: str | Path | None = None) -> Path:
    """The cache file for ``spec``, trained and written on first use."""
    return cached_classifier(cache_root(root) / "domain" / f"{spec.key()}.pt", spec,
                             lambda: train_domain_classifier(spec))


def domain_classifier(spec: DomainClassifierSpec | None = None, cache_dir: str | Path | None = None
                      ) -> ShapesClassifier:
    """The cached classifier for ``spec`` (default settings if None), trained on first use."""
    return load_domain_classifier(domain_classifier_path(spec or DomainClassifierSpec(), cache_dir))


def load_domain_classifier(path: str | Path) -> ShapesClassifier:
    """Classifier from a file written by :func:`domain_classifier_path`, in eval mode."""
    return load_classifier(path, DomainClassifierSpec,
                           lambda spec: ShapesClassifier(spec.image_size, spec.grid, spec.width))


def uint8_to_unit(images: Tensor) -> Tensor:
    """(B, 3, H, W) uint8 -> float in [-1, 1], the inverse of the data pipeline's scaling."""
    return images.float() / 127.5 - 1.0


class DomainFeatureExtractor(torch_fidelity.FeatureExtractorBase):
    """torch-fidelity view of a cached ShapesClassifier; ``feature_extractor_weights_path`` is the
    classifier file. Input: (B, 3, H, W) uint8, as torch-fidelity feeds every extractor."""

    _FEATURE_FOR_METRIC = {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: Any):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise NarBenchError(f"feature extractor '{TORCH_FIDELITY_NAME}' needs feature_extractor_weights_path: "
                                "a classifier file from nar_bench.metrics.domain.domain_classifier_path")
        self.net = load_domain_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return DomainFeatureExtractor._FEATURE_FOR_METRIC[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        features = self.net.features(uint8_to_unit(images))
        out = {"features": features, "logits": self.net.head(features)}
        return tuple(out[name] for name in self.features_list)


torch_fidelity.register_feature_extractor(TORCH_FIDELITY_NAME, DomainFeatureExtractor)


@dataclass
class ClassConsistency:
    """``accuracy``: fraction of samples classified as their conditioning class.
    ``per_class``: one row per class (index = class id) with name, count, correct, accuracy
    (NaN for classes without samples)."""

    accuracy: float
    per_class: pd.DataFrame


@torch.no_grad()
def class_consistency(samples: Tensor, labels: Tensor, classifier: ShapesClassifier,
                      batch_size: int = 256) -> ClassConsistency:
    """samples: (N, 3, H, W) uint8; labels: (N,) conditioning classes; classifier e.g. from
    :func:`domain_classifier`."""
    if len(samples) != len(labels):
        raise NarBenchError(f"{len(samples)} samples but {len(labels)} labels; pass one label per sample")
    device = next(classifier.parameters()).device
    preds = torch.cat([classifier(uint8_to_unit(chunk.to(device))).argmax(-1).cpu()
                       for chunk in samples.split(batch_size)])
    labels = labels.cpu().long()
    num_classes = classifier.head.out_features
    count = torch.bincount(labels, minlength=num_classes)
    correct = torch.bincount(labels[preds == labels], minlength=num_classes)
    per_class = pd.DataFrame(
        {"name": [class_name(c) for c in range(num_classes)], "count": count.numpy(), "correct": correct.numpy()},
        index=pd.RangeIndex(num_classes, name="class"),
    )
    per_class["accuracy"] = per_class["correct"] / per_class["count"].where(per_class["count"] > 0)
    return ClassConsistency(accuracy=float(correct.sum()) / max(len(labels), 1), per_class=per_class)
