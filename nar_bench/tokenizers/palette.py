"""Lossless palette codec for the synthetic data: one code per grid cell = its palette colour.

Images (B, 3, H, W) map to an (g, g) code grid; with ``frames`` = T, video clips (B, 3, T, H, W)
map to a (T, g, g) grid, frame by frame.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nar_bench.data.shapes import PALETTE
from nar_bench.registry import TOKENIZERS
from nar_bench.tokenizers.base import Tokenizer


@TOKENIZERS.register("palette")
class PaletteTokenizer(Tokenizer):
    def __init__(self, image_size: int = 64, grid_size: int = 16, palette=PALETTE, frames: int | None = None):
        super().__init__()
        if image_size % grid_size:
            raise ValueError(f"image_size {image_size} must be a multiple of grid_size {grid_size}")
        self.patch = image_size // grid_size
        self.grid = (grid_size, grid_size) if frames is None else (frames, grid_size, grid_size)
        colours = torch.as_tensor(palette, dtype=torch.float32) / 127.5 - 1.0  # (K, 3) in [-1, 1]
        self.register_buffer("colours", colours, persistent=False)
        self.vocab_size = len(colours)

    @classmethod
    def from_config(cls, cfg) -> PaletteTokenizer:
        return cls(cfg.data.image_size, cfg.data.grid_size, frames=cfg.data.frames)

    def encode(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) or, with frames, (B, 3, T, H, W) in [-1, 1] -> codes (B, N), raster order."""
        if images.dim() != 2 + len(self.grid):
            raise ValueError(f"expected {2 + len(self.grid)}D input for grid {self.grid}, got {tuple(images.shape)}")
        p = self.patch
        cells = images[..., p // 2 :: p, p // 2 :: p].flatten(2).transpose(1, 2)  # (B, N, 3) cell centres
        return torch.cdist(cells.float(), self.colours).argmin(-1)

    def decode(self, codes: Tensor) -> Tensor:
        """codes (B, N) or (B, *grid) -> (B, 3, H, W) or (B, 3, T, H, W) in [-1, 1]."""
        cells = self.colours[codes.reshape(codes.shape[0], *self.grid)].movedim(-1, 1)  # (B, 3, *grid)
        return cells.repeat_interleave(self.patch, -2).repeat_interleave(self.patch, -1)
