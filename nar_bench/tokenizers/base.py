"""Tokenizer interface: images in [-1, 1] <-> discrete codes on a grid."""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn


class Tokenizer(nn.Module, ABC):
    vocab_size: int
    grid: tuple[int, ...]

    @abstractmethod
    def encode(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) (video: (B, 3, T, H, W)) in [-1, 1] -> codes (B, N), raster order."""

    @abstractmethod
    def decode(self, codes: Tensor) -> Tensor:
        """codes (B, N) or (B, *grid) -> (B, 3, H, W) (video: (B, 3, T, H, W)) in [-1, 1]."""
