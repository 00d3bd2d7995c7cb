import pytest
import torch

import nar_bench  # noqa: F401  (first: makes torchvision importable before Lightning imports it)
from nar_bench.nn.transformer import TransformerConfig


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


def randomize_heads(module: torch.nn.Module, std: float = 0.3) -> None:
    """Output layers are zero-initialised (all logits equal); equivalence tests need real logits."""
    for name, p in module.named_parameters():
        if "output" in name:
            torch.nn.init.normal_(p, std=std)


@pytest.fixture
def single_thread():
    """Tiny conv nets run faster on one thread, and much faster on a busy shared CPU (no spinning)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
