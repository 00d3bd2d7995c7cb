"""FVD-style metric: Fréchet distance between features of real and generated videos.

Real FVD uses Kinetics-400 I3D features. Its weights (StyleGAN-V's TorchScript export,
``i3d_torchscript.pt``) are not bundled and never downloaded here (the benchmark machines are
offline): ``I3DFeatures`` loads them from a local path and raises ``NarBenchError`` without one.
For the synthetic moving-shapes data the default extractor is a domain one, a tiny 3D-conv
classifier trained through Lightning on the clips themselves (seconds on CPU), cached per setting
under ``<cache_dir>/<key>.pt``. Both take uint8 clips (B, 3, T, H, W).

The distance itself is torch-fidelity's (``fid_features_to_statistics`` /
``fid_statistics_to_metric``), so FID and this FVD share one implementation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

from nar_bench.data.moving_shapes import NUM_CLASSES, MovingShapesDataset
from nar_bench.errors import NarBenchError
from nar_bench.metrics.cache import cache_root
from nar_bench.metrics.classifier import ClassifierSpec, cached_classifier, fit_classifier, load_classifier
from nar_bench.metrics.domain import uint8_to_unit
from nar_bench.registry import FEATURE_EXTRACTORS

I3D_WEIGHTS_ENV = "NAR_BENCH_I3D_WEIGHTS"


@dataclass(frozen=True)
class VideoClassifierSpec(ClassifierSpec):
    """Everything that determines the trained VideoClassifier; its hash names the cache file.
    frames / image_size / grid / seed are the moving-shapes settings (``data.*``)."""

    frames: int = 4
    image_size: int = 32
    grid: int = 8
    seed: int = 0
    steps: int = 300
    batch_size: int = 32
    width: int = 16
    lr: float = 1e-2

    def label(self) -> str:
        return f"moving_shapes{self.frames}x{self.image_size}g{self.grid}s{self.seed}"


class VideoClassifier(nn.Module):
    """(B, 3, T, S, S) clips in [-1, 1] -> class logits; ``features`` gives the (B, 4 * width)
    layer-normalised features the Fréchet distance compares. Average-pools each frame to the token
    grid first (lossless for palette clips, and cheap), then 3D convolutions mix space and time."""

    def __init__(self, image_size: int, grid: int, width: int, num_classes: int = NUM_CLASSES):
        super().__init__()
        patch = image_size // grid

        def conv(c_in: int, c_out: int, stride: tuple[int, int, int]) -> nn.Module:
            return nn.Sequential(nn.Conv3d(c_in, c_out, 3, stride, 1), nn.GELU())

        self.body = nn.Sequential(
            nn.AvgPool3d((1, patch, patch)),
            conv(3, width, (1, 1, 1)), conv(width, 2 * width, (1, 2, 2)), conv(2 * width, 4 * width, (2, 2, 2)),
            nn.AdaptiveMaxPool3d(1), nn.Flatten(),
            nn.LayerNorm(4 * width, elementwise_affine=False),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def features(self, videos: Tensor) -> Tensor:
        return self.body(videos)

    def forward(self, videos: Tensor) -> Tensor:
        return self.head(self.features(videos))


def train_video_classifier(spec: VideoClassifierSpec) -> VideoClassifier:
    """A freshly trained classifier; every step sees new clips (the dataset is procedural)."""
    data = MovingShapesDataset(spec.steps * spec.batch_size, spec.frames, spec.image_size, spec.grid, spec.seed)
    return fit_classifier(lambda: VideoClassifier(spec.image_size, spec.grid, spec.width), data, spec.steps,
                          spec.batch_size, spec.lr, spec.seed)


def video_classifier(spec: VideoClassifierSpec | None = None, cache_dir: str | Path | None = None) -> VideoClassifier:
    """The classifier for ``spec`` from ``<cache root>/video_domain/<spec.key()>.pt``, trained and
    written on first use."""
    spec = spec or VideoClassifierSpec()
    path = cached_classifier(cache_root(cache_dir) / "video_domain" / f"{spec.key()}.pt", spec,
                             lambda: train_video_classifier(spec))
    return load_classifier(path, VideoClassifierSpec, lambda s: VideoClassifier(s.image_size, s.grid, s.width))


class DomainVideoFeatures(nn.Module):
    """uint8 clips (B, 3, T, H, W) -> features (B, F) of the cached moving-shapes classifier."""

    def __init__(self, spec: VideoClassifierSpec | None = None, cache_dir: str | Path | None = None):
        super().__init__()
        self.net = video_classifier(spec, cache_dir)

    @torch.no_grad()
    def forward(self, videos: Tensor) -> Tensor:
        return self.net.features(uint8_to_unit(videos))


class I3DFeatures(nn.Module):
    """uint8 clips (B, 3, T, H, W) -> 400-class I3D features (B, 400) from StyleGAN-V's TorchScript
    I3D (``i3d_torchscript.pt``), called as there: pixels in [0, 255], the detector rescales to
    [-1, 1] and resizes to 224px itself, returning the features before the softmax."""

    def __init__(self, weights_path: str | Path | None = None):
        super().__init__()
        weights_path = weights_path or os.environ.get(I3D_WEIGHTS_ENV)
        if not weights_path or not Path(weights_path).is_file():
            raise NarBenchError(
                f"I3D weights '{weights_path}' not found: real FVD needs StyleGAN-V's TorchScript I3D "
                "(i3d_torchscript.pt), which nar-bench never downloads; copy it to this machine and point "
                f"eval.extractor_options.weights_path or ${I3D_WEIGHTS_ENV} at it, or use eval.extractor=video_domain "
                "for the synthetic moving shapes")
        try:
            self.detector = torch.jit.load(str(weights_path), map_location="cpu").eval()
        except Exception as err:  # torch.jit.load raises many types for a file that is not TorchScript
            raise NarBenchError(f"I3D weights '{weights_path}' cannot be loaded ({type(err).__name__}); the file is "
                                "corrupt or not StyleGAN-V's i3d_torchscript.pt: copy it again") from None

    @torch.no_grad()
    def forward(self, videos: Tensor) -> Tensor:
        return self.detector(videos.float(), rescale=True, resize=True, return_features=True)


FEATURE_EXTRACTORS.register("video_domain")(
    lambda root=None, **options: DomainVideoFeatures(VideoClassifierSpec.from_options(options), root))
@FEATURE_EXTRACTORS.register("i3d")
def i3d_extractor(root=None, **options) -> I3DFeatures:
    unknown = sorted(set(options) - {"weights_path"})
    if unknown:
        raise NarBenchError(f"unknown i3d extractor option(s) {unknown}; valid: weights_path")
    return I3DFeatures(options.get("weights_path"))


VIDEO_EXTRACTORS = ("video_domain", "i3d")


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to features real (N, F) and fake (M, F)."""
    stats = [fid_features_to_statistics(f.detach().double().cpu()) for f in (real, fake)]
    return float(fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID])


def batched_features(extractor: nn.Module, videos: Tensor, batch_size: int = 64) -> Tensor:
    """uint8 clips (N, 3, T, H, W) -> (N, F) features, ``batch_size`` clips at a time."""
    device = next(extractor.parameters(), torch.empty(0)).device
    return torch.cat([extractor(chunk.to(device)).float().cpu() for chunk in videos.split(batch_size)])


def fvd(real: Tensor, fake: Tensor, extractor: nn.Module, batch_size: int = 64) -> float:
    """FVD-style distance between uint8 clips real (N, 3, T, H, W) and fake (M, 3, T, H, W)."""
    features = (batched_features(extractor, clips, batch_size) for clips in (real, fake))
    return frechet_distance(*features)
