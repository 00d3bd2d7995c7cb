"""The tokenizer's slice of an experiment config (``tokenizer`` and the data geometry it codes),
checked before anything is built or trained."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from nar_bench.errors import NarBenchError
from nar_bench.registry import TOKENIZERS


def check_geometry(cfg: DictConfig) -> None:
    """data.image_size must split into data.grid_size cells (the shapes data and the palette
    tokenizer draw on that grid; a learned tokenizer's own grid is checked by
    :func:`check_tokenizer_inputs`)."""
    if cfg.tokenizer.name in TOKENIZERS and getattr(TOKENIZERS[cfg.tokenizer.name], "learned", False):
        return
    size, grid = cfg.data.image_size, cfg.data.grid_size
    if size < 1 or grid < 1 or size % grid:
        fits = [g for g in range(1, size + 1) if size % g == 0 and g <= 64] if size > 0 else []
        raise NarBenchError(f"data.grid_size {grid} does not divide data.image_size {size}: tokens are square cells "
                            f"of image_size / grid_size pixels; use a grid size dividing {size} "
                            f"(e.g. {', '.join(map(str, fits[-4:]))})")


def check_tokenizer_inputs(cfg: DictConfig) -> None:
    """The geometry and the tokenizer a generator run needs: a known tokenizer; a learned one has a
    checkpoint file or ``tokenizer.untrained=true``, and data.grid_size is the grid it makes."""
    check_geometry(cfg)
    tok = cfg.tokenizer
    if tok.name not in TOKENIZERS:
        raise NarBenchError(f"unknown tokenizer.name '{tok.name}'; choose one of: {', '.join(sorted(TOKENIZERS))}")
    cls = TOKENIZERS[tok.name]
    if not getattr(cls, "learned", False):  # registered factories (codes) read a manifest
        return
    if tok.checkpoint and not Path(tok.checkpoint).is_file():
        raise NarBenchError(f"tokenizer.checkpoint: file '{tok.checkpoint}' not found; train one with "
                            "nar-bench train-tokenizer or point tokenizer.checkpoint at the right path")
    if not tok.checkpoint and not tok.untrained:
        raise NarBenchError(f"tokenizer '{tok.name}' has learned weights but tokenizer.checkpoint is not set: "
                            "train one first (nar-bench train-tokenizer ...) and pass tokenizer.checkpoint=<path>, "
                            "or set tokenizer.untrained=true to run on the codes of random weights")
    grid = cls.config_grid(cfg)
    if grid is not None and cfg.data.frames is None and tuple(grid) != (cfg.data.grid_size,) * 2:
        raise NarBenchError(
            f"data.grid_size {cfg.data.grid_size} is ignored by tokenizer '{tok.name}': it makes a "
            f"{grid[0]}x{grid[1]} code grid from {cfg.data.image_size}px images (its downsample / scales); set "
            f"data.grid_size={grid[0]} (the synthetic data draws on that grid too) or change data.image_size / "
            "tokenizer.options")
