"""Module mode helpers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block; its previous train/eval mode is restored on exit,
    exceptions included."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
