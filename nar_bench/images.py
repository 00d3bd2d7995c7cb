"""Image helpers: [-1, 1] floats <-> uint8, sample grids (PNG for images, animated GIF for video)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor  # noqa: E402


def to_uint8(images: Tensor) -> Tensor:
    """(B, 3, ...) in [-1, 1] -> uint8 of the same shape (images or video)."""
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


def save_gif(frames: list[np.ndarray], path: str | Path, duration_ms: int | list[int] = 250) -> Path:
    """Writes uint8 frames (H, W, 3) as a looping GIF, one GIF frame per array (callers keep
    consecutive frames distinct: PIL merges identical ones). ``duration_ms``: one for all frames
    or one per frame."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first, *rest = (Image.fromarray(np.ascontiguousarray(f)) for f in frames)
    first.save(path, save_all=True, append_images=rest, duration=duration_ms, loop=0)
    return path


def save_samples(samples: Tensor, path: str | Path, nrow: int) -> Path:
    """uint8 images (B, 3, H, W) -> PNG grid at ``path``; uint8 videos (B, 3, T, H, W) -> animated
    GIF of grids at ``path`` with suffix .gif. Returns the written path."""
    if samples.dim() == 4:
        return save_grid(samples, path, nrow)
    frames = [image_grid(samples[:, :, t], nrow).numpy() for t in range(samples.shape[2])]
    return save_gif(frames, Path(path).with_suffix(".gif"))
