from pathlib import Path

import pytest
import torch

import nar_bench  # noqa: F401  (first: makes torchvision importable before Lightning imports it)
from nar_bench.metrics.cache import CACHE_ENV
from nar_bench.nn.transformer import TransformerConfig
from nar_bench.tokenizers.base import CodeSpace


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_cfg() -> TransformerConfig:
    return TransformerConfig(dim=32, n_layers=2, n_heads=4, vocab_size=24, num_classes=5)


def on_grid(cfg: TransformerConfig, grid: tuple[int, ...]) -> tuple[TransformerConfig, CodeSpace]:
    """(model config, raster code space of its vocabulary over ``grid``): a paradigm's first two
    arguments, e.g. ``NAR(*on_grid(cfg, (4, 4)))``."""
    return cfg, CodeSpace(cfg.vocab_size, tuple(grid))


def randomize_heads(module: torch.nn.Module, std: float = 0.3):
    """Output layers are zero-initialised (all logits equal); equivalence tests need real logits.
    Returns ``module``."""
    for name, p in module.named_parameters():
        if "output" in name:
            torch.nn.init.normal_(p, std=std)
    return module


def train_steps(model: torch.nn.Module, tokens, labels, steps: int, lr: float = 3e-3) -> list[float]:
    """Losses of ``steps`` AdamW steps on one batch; asserts every parameter gets a gradient."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model.loss(tokens, labels)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        optimizer.step()
    return losses


def tracking_overrides(tmp_path: Path, experiment: str | None = "test") -> list[str]:
    """Dotlist overrides keeping a test's MLflow store, artifacts and run folders under ``tmp_path``
    (and its runs in MLflow experiment ``experiment``; None: the config's own)."""
    overrides = [f"tracking.tracking_uri=sqlite:///{tmp_path}/mlruns.db", f"tracking.artifact_location={tmp_path}/art",
                 f"output_dir={tmp_path}/runs"]
    return overrides + ([f"tracking.experiment={experiment}"] if experiment else [])


@pytest.fixture
def metrics_cache(tmp_path_factory, monkeypatch):
    """One metrics cache (domain classifiers, reference features) per test session, not results/cache."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path_factory.getbasetemp() / "metrics-cache"))


@pytest.fixture
def single_thread():
    """Tiny conv nets run faster on one thread, and much faster on a busy shared CPU (no spinning)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory) -> Path:
    """A weights file for torch-fidelity's InceptionV3 with random weights: the official file is not
    on test machines, and the wiring (layers, hooks, shapes) does not depend on trained weights."""
    from nar_bench.metrics.fidelity import torch_fidelity

    inception = torch_fidelity.FeatureExtractorInceptionV3
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "load", lambda *args, **kwargs: None)
        patch.setattr(inception, "load_state_dict", lambda self, state_dict: None)
        random_init = inception("inception-v3-compat", ["2048"], feature_extractor_weights_path="not read")
    for module in random_init.modules():  # He init keeps activations O(1) through the 90-odd ReLU layers
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.nn.init.normal_(random_init.fc.weight, std=2048**-0.5)
    path = tmp_path_factory.mktemp("inception") / "inception-random.pth"
    torch.save(random_init.state_dict(), path)
    return path
