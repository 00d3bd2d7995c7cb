"""FVD-style metric: torch-fidelity's Fréchet distance on video features, the cached domain
classifier, and the local-only I3D extractor."""


import pytest
import torch
from torch import Tensor, nn

import nar_bench.metrics.fvd as fvd_module
from nar_bench.data.moving_shapes import MovingShapesDataset
from nar_bench.errors import NarBenchError
from nar_bench.metrics.fvd import (
    DomainVideoFeatures,
    I3DFeatures,
    VideoClassifierSpec,
    frechet_distance,
    fvd,
)
from nar_bench.registry import FEATURE_EXTRACTORS

SPEC = VideoClassifierSpec(frames=4, image_size=16, grid=8, steps=100, batch_size=16, width=8, lr=1e-2)


def clips(n: int, seed: int) -> Tensor:
    ds = MovingShapesDataset(n, SPEC.frames, SPEC.image_size, SPEC.grid, seed, "val")
    return ((torch.stack([ds[i][0] for i in range(n)]) + 1) * 127.5).round().to(torch.uint8)


def test_frechet_distance_of_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-9)
    # N(0, I) vs N(mu, 4I): |mu|^2 + trace(I + 4I - 2 * 2I) = |mu|^2 + 3
    b = 2 * torch.randn(4000, 3, generator=g) + torch.tensor([1.0, 0.0, 2.0])
    assert frechet_distance(a, b) == pytest.approx(5 + 3, rel=0.1)


@pytest.fixture(scope="module")
def domain_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("video_domain")
    DomainVideoFeatures(SPEC, cache)  # trains once (a few seconds) and writes the cache file
    return cache


def test_domain_classifier_is_trained_once_and_cached(domain_cache, monkeypatch):
    (path,) = (domain_cache / "video_domain").iterdir()
    assert path.name == f"{SPEC.key()}.pt"
    monkeypatch.setattr(fvd_module, "train_video_classifier", lambda spec: pytest.fail("retrained a cached spec"))
    a, b = DomainVideoFeatures(SPEC, domain_cache), FEATURE_EXTRACTORS["video_domain"](domain_cache, **vars(SPEC))
    videos = clips(4, 0)
    assert a(videos).shape == (4, 4 * SPEC.width)
    assert torch.equal(a(videos), b(videos))


def test_fvd_separates_real_clips_from_frozen_ones(domain_cache):
    extractor = DomainVideoFeatures(SPEC, domain_cache)
    real, other = clips(64, 0), clips(64, 1)
    frozen = real[:, :, :1].expand_as(real).contiguous()  # right content, no motion
    assert fvd(real, real, extractor) == pytest.approx(0, abs=1e-6)
    assert fvd(real, frozen, extractor) > 2 * fvd(real, other, extractor)


def test_i3d_needs_a_local_weights_file(tmp_path):
    for path in (None, tmp_path / "i3d_torchscript.pt"):
        with pytest.raises(NarBenchError, match="never downloads"):
            I3DFeatures(path)


class FakeI3D(nn.Module):
    """Stands in for StyleGAN-V's TorchScript I3D: same call signature, mean pixel per channel."""

    def forward(self, x: Tensor, rescale: bool, resize: bool, return_features: bool) -> Tensor:
        assert rescale and resize and return_features
        return x.mean(dim=(2, 3, 4))


def test_i3d_extractor_calls_the_torchscript_detector_stylegan_v_style(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(FakeI3D()).save(str(path))
    videos = clips(2, 0)
    features = FEATURE_EXTRACTORS["i3d"](weights_path=path)(videos)
    torch.testing.assert_close(features, videos.float().mean(dim=(2, 3, 4)))  # pixels in [0, 255]
