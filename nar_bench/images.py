"""Image helpers: [-1, 1] floats <-> uint8, sample grids."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402


def to_uint8(images: Tensor) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> uint8 (B, 3, H, W)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def image_grid(images: Tensor, nrow: int, pad: int = 2) -> Tensor:
    """uint8 (B, 3, H, W) -> uint8 (rows*(H+pad), nrow*(W+pad), 3), filled row by row."""
    b, c, h, w = images.shape
    rows = -(-b // nrow)
    canvas = torch.full((rows, nrow, c, h + pad, w + pad), 255, dtype=torch.uint8)
    canvas.view(-1, c, h + pad, w + pad)[:b, :, :h, :w] = images.cpu()
    return canvas.permute(0, 3, 1, 4, 2).reshape(rows * (h + pad), nrow * (w + pad), c)


def save_grid(images: Tensor, path: str | Path, nrow: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, image_grid(images, nrow).numpy())
    return path
