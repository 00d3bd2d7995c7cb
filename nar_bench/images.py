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


def labelled_grid(images: Tensor, labels: Tensor | list[int], nrow: int, title: str,
                  class_names: list[str] | None = None, caption: str = "", pad: int = 2) -> np.ndarray:
    """uint8 (B, 3, H, W) images -> uint8 (H', W', 3) grid with ``title`` (e.g. variant and seed) on
    top, the class of each column above it (``class_names[label]`` or "class <label>", from the
    first row's ``labels``) and ``caption`` (e.g. provenance, sampling settings) at the bottom."""
    from PIL import ImageDraw, ImageFont

    grid = image_grid(images, nrow, pad).numpy()
    labels = [int(label) for label in labels]
    font = ImageFont.load_default(size=11)
    cell = images.shape[-1] + pad
    names = [class_names[label] if class_names and label < len(class_names) else f"class {label}"
             for label in labels[:nrow]]
    if any(font.getlength(name) > cell for name in names):  # small cells: the class number alone
        names = [str(label) for label in labels[:nrow]]
        title = f"{title}  (columns: class {', '.join(names)})"
    lines = caption.splitlines() if caption else []
    header, footer = 34, 14 * len(lines) + 6 if lines else 0
    width = int(max([grid.shape[1], font.getlength(title) + 4, *(font.getlength(line) + 4 for line in lines)]))
    canvas = Image.new("RGB", (width, grid.shape[0] + header + footer), "white")
    canvas.paste(Image.fromarray(grid), (0, header))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), title, fill=(0, 0, 0), font=font)
    for col, name in enumerate(names):
        draw.text((col * cell + 1, 18), name, fill=(60, 60, 60), font=font)
    if lines:
        draw.multiline_text((2, header + grid.shape[0] + 3), "\n".join(lines), fill=(80, 80, 80), font=font)
    return np.asarray(canvas)


def save_labelled_grid(images: Tensor, labels: Tensor | list[int], path: str | Path, nrow: int, title: str,
                       class_names: list[str] | None = None, caption: str = "") -> Path:
    """:func:`labelled_grid` written as a PNG at ``path`` (what evaluation and ``nar-bench sample``
    write: a sample grid that says which class and which variant it shows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labelled_grid(images, labels, nrow, title, class_names, caption)).save(path)
    return path
