"""Procedurally generated class-conditional video clips: one shaded shape moving over a banded
background.

class = shape x motion direction (4 x 4 = 16 classes); the colour, size, start and speed are
random per clip. Frames are drawn on the token grid with the shapes palette and upsampled by
nearest neighbour, so the palette tokenizer (with ``frames``) is lossless. Item i of a split
depends only on (seed, split, i).
"""

from __future__ import annotations

import numpy as np

from nar_bench.data.shapes import COLOURS, SHAPES, ShapesDataset, background_codes, paint_shape
from nar_bench.errors import NarBenchError
from nar_bench.registry import DATASETS

DIRECTIONS = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}  # (dy, dx) per frame
NUM_CLASSES = len(SHAPES) * len(DIRECTIONS)


def class_name(label: int) -> str:
    shape, direction = divmod(label, len(DIRECTIONS))
    return f"{SHAPES[shape]} moving {list(DIRECTIONS)[direction]}"


def render_video_codes(label: int, frames: int, grid: int, rng: np.random.Generator) -> np.ndarray:
    """(frames, grid, grid) palette indices for one clip of class ``label``: the shape crosses
    60-100% of the free span along its direction, staying fully inside the frame."""
    shape, direction = divmod(label, len(DIRECTIONS))
    dy, dx = DIRECTIONS[list(DIRECTIONS)[direction]]
    colour = rng.integers(len(COLOURS))
    background = background_codes(grid, rng)
    r = rng.uniform(0.2, 0.3) * grid
    span = grid - 2 * r
    travel = span * rng.uniform(0.6, 1.0)
    start = r + rng.uniform(0, span - travel)
    across = rng.uniform(r, grid - r)  # fixed coordinate perpendicular to the motion
    clip = []
    for t in range(frames):
        along = start + travel * t / max(frames - 1, 1)
        if dy + dx < 0:  # up / left: mirror the path
            along = grid - along
        cy, cx = (along, across) if dy else (across, along)
        clip.append(paint_shape(background, SHAPES[shape], colour, cy, cx, r))
    return np.stack(clip)


class MovingShapesDataset(ShapesDataset):
    """Clips in [-1, 1], (3, T, S, S) float32, and their class labels."""

    def __init__(self, size: int, frames: int = 4, image_size: int = 32, grid: int = 8, seed: int = 0,
                 split: str = "train"):
        super().__init__(size, image_size, grid, seed, split)
        self.frames = frames
        self.num_classes = NUM_CLASSES

    def codes(self, index: int) -> tuple[np.ndarray, int]:
        rng = np.random.default_rng([self.seed, self.split_id, index])
        label = index % self.num_classes  # class-balanced
        return render_video_codes(label, self.frames, self.grid, rng), label


@DATASETS.register("moving_shapes")
def moving_shapes(data_cfg, split: str) -> MovingShapesDataset:
    if not data_cfg.frames or data_cfg.frames < 1:
        raise NarBenchError(f"data.frames={data_cfg.frames}: dataset 'moving_shapes' is video; "
                            "set data.frames to the clip length (e.g. 4)")
    size = data_cfg.num_train if split == "train" else data_cfg.num_val
    return MovingShapesDataset(size, data_cfg.frames, data_cfg.image_size, data_cfg.grid_size, data_cfg.seed, split)
