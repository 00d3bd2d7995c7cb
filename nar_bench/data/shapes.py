"""Procedurally generated class-conditional images: coloured, shaded shapes on a banded background.

class = shape x colour (4 x 4 = 16 classes). Every image is drawn on the token grid with colours
from a fixed palette and upsampled by nearest neighbour, so the palette tokenizer is lossless.
Item i of a split depends only on (seed, split, i): deterministic with any number of workers.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from nar_bench.errors import NarBenchError
from nar_bench.registry import DATASETS

SHAPES = ("square", "circle", "triangle", "cross")
COLOURS = {  # base RGB; each colour also gets a dark and a light shade
    "red": (200, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 210),
    "yellow": (220, 200, 40),
}
BACKGROUND = ((20, 20, 28), (45, 45, 60), (75, 70, 90), (110, 105, 120))


def _palette() -> np.ndarray:
    rows = list(BACKGROUND)
    for rgb in COLOURS.values():
        base = np.array(rgb)
        rows += [tuple(base * 0.6), tuple(base), tuple(np.minimum(255, base * 0.6 + 100))]
    return np.array(rows, dtype=np.uint8)


PALETTE = _palette()  # (16, 3) uint8: 4 background tones, then dark/base/light per colour
NUM_CLASSES = len(SHAPES) * len(COLOURS)


def class_name(label: int) -> str:
    return f"{list(COLOURS)[label % len(COLOURS)]} {SHAPES[label // len(COLOURS)]}"


def shape_mask(shape: str, y: np.ndarray, x: np.ndarray, r: float) -> np.ndarray:
    """y, x: cell-centre offsets from the shape centre, in cells."""
    if shape == "square":
        return (np.abs(x) <= r) & (np.abs(y) <= r)
    if shape == "circle":
        return x**2 + y**2 <= r**2
    if shape == "triangle":  # apex up
        return (y <= r) & (y >= -r) & (np.abs(x) <= (y + r) / 2)
    arm = r / 2.5  # cross
    return ((np.abs(x) <= arm) & (np.abs(y) <= r)) | ((np.abs(y) <= arm) & (np.abs(x) <= r))


def background_codes(grid: int, rng: np.random.Generator) -> np.ndarray:
    """(grid, grid) palette indices: two adjacent background tones in diagonal or straight bands."""
    yy, xx = np.mgrid[0:grid, 0:grid] + 0.5
    angle = rng.uniform(0, 2 * np.pi)
    phase = (np.cos(angle) * xx + np.sin(angle) * yy) / grid * rng.uniform(1.0, 3.0)
    tone = rng.integers(0, len(BACKGROUND) - 1)
    return np.where(np.floor(phase + rng.uniform()) % 2 == 0, tone, tone + 1)


def paint_shape(codes: np.ndarray, shape: str, colour: int, cy: float, cx: float, r: float) -> np.ndarray:
    """``codes`` (grid, grid) with a shaded shape of radius r (cells) centred at (cy, cx) on top."""
    yy, xx = np.mgrid[0 : codes.shape[0], 0 : codes.shape[1]] + 0.5
    y, x = yy - cy, xx - cx
    inside = shape_mask(shape, y, x, r)
    # light from the upper left: dark / base / light shades by position along the diagonal
    shade = np.digitize((x + y) / (2 * r), [-0.35, 0.35])
    first = len(BACKGROUND) + 3 * colour
    return np.where(inside, first + (2 - shade), codes).astype(np.int64)


def render_codes(label: int, grid: int, rng: np.random.Generator) -> np.ndarray:
    """(grid, grid) palette indices for one image of class ``label``."""
    shape, colour = divmod(label, len(COLOURS))
    codes = background_codes(grid, rng)
    r = rng.uniform(0.2, 0.35) * grid
    cy, cx = rng.uniform(r, grid - r, size=2)
    return paint_shape(codes, SHAPES[shape], colour, cy, cx, r)


class ShapesDataset(Dataset):
    """Images in [-1, 1], (3, S, S) float32, and their class labels."""

    splits = {"train": 0, "val": 1, "test": 2}

    def __init__(self, size: int, image_size: int = 64, grid: int = 16, seed: int = 0, split: str = "train"):
        if image_size % grid:
            raise ValueError(f"image_size {image_size} must be a multiple of grid {grid}")
        self.size, self.image_size, self.grid, self.seed = size, image_size, grid, seed
        self.split_id = self.splits[split]
        self.num_classes = NUM_CLASSES
        self.palette = PALETTE

    def __len__(self) -> int:
        return self.size

    def codes(self, index: int) -> tuple[np.ndarray, int]:
        rng = np.random.default_rng([self.seed, self.split_id, index])
        label = index % self.num_classes  # class-balanced
        return render_codes(label, self.grid, rng), label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """(3, S, S) image in [-1, 1] (subclasses: (3, ..., S, S)) and its label."""
        codes, label = self.codes(index)
        patch = self.image_size // self.grid
        pixels = PALETTE[codes].repeat(patch, -3).repeat(patch, -2)  # (..., S, S, 3) uint8
        return torch.from_numpy(pixels).movedim(-1, 0).float() / 127.5 - 1.0, label


@DATASETS.register("shapes")
def shapes(data_cfg, split: str) -> ShapesDataset:
    if data_cfg.frames is not None:
        raise NarBenchError(f"data.frames={data_cfg.frames} is set but dataset 'shapes' has still images; "
                            "remove data.frames or use data.name=moving_shapes")
    size = data_cfg.num_train if split == "train" else data_cfg.num_val
    return ShapesDataset(size, data_cfg.image_size, data_cfg.grid_size, data_cfg.seed, split)
