"""Tokenizer interface: images in [-1, 1] <-> discrete codes on a grid."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn

from nar_bench.checkpoints import Layout
from nar_bench.errors import NarBenchError

Config = TypeVar("Config")
RASTER, MULTISCALE = "raster", "multiscale"


class NextScaleInputs(Protocol):
    """What next-scale prediction (VAR) is fed, computed by a multi-scale tokenizer's quantiser."""

    z_channels: int

    def teacher_inputs(self, codes: Tensor) -> Tensor:
        """Codes (B, L) -> (B, L - scales[0]^2, z_channels): every scale after the first gets the
        accumulated features of the coarser scales at its own side."""

    def next_input(self, si: int, f_hat: Tensor, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        """Adds scale ``si``'s codes to f_hat; returns it and the next scale's inputs (None after the last)."""


@dataclass(frozen=True)
class CodeSpace:
    """The codes a generator produces, as the tokenizer defines them.

    ``raster``: one code per cell of ``grid``, codes (B, *grid) (flattened (B, N) in raster order
    for training). ``multiscale``: token maps of sides ``scales`` (coarse to fine, the last one
    ``grid``), concatenated into codes (B, sum s^2); ``next_scale`` builds what a next-scale
    generator is fed."""

    vocab_size: int
    grid: tuple[int, ...]
    layout: str = RASTER
    scales: tuple[int, ...] = ()
    next_scale: NextScaleInputs | None = field(default=None, compare=False, repr=False)

    @property
    def num_tokens(self) -> int:
        if self.layout == MULTISCALE:
            return sum(s * s for s in self.scales)
        return math.prod(self.grid)


class Tokenizer(nn.Module, ABC):
    vocab_size: int
    grid: tuple[int, ...]
    learned: bool = False  # its codes come from trained weights (tokenizer.checkpoint), e.g. vq, msvq
    official_layout: Layout | None = None  # how a released checkpoint maps onto it (nar_bench.checkpoints)
    # The evaluation engine decodes it compiled with the Triton norms inside and replayed as one CUDA
    # graph per chunk (measured and tested for VQ-16 only: results/evaluate_speed/diag); else eager.
    graphed_decode: bool = False

    @classmethod
    def config_grid(cls, cfg: Any) -> tuple[int, ...] | None:
        """The code grid ``from_config(cfg)`` would build, read from the config alone (no weights
        built); None when the tokenizer cannot tell without building (e.g. codes read a manifest)."""
        return None

    @property
    def code_space(self) -> CodeSpace:
        """Raster codes over ``grid``; multi-scale tokenizers override this."""
        return CodeSpace(self.vocab_size, tuple(self.grid))

    @abstractmethod
    def encode(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) (video: (B, 3, T, H, W)) in [-1, 1] -> codes (B, N), raster order."""

    @abstractmethod
    def decode(self, codes: Tensor) -> Tensor:
        """codes in the code space's layout (raster: (B, N) or (B, *grid)) -> (B, 3, H, W)
        (video: (B, 3, T, H, W)) in [-1, 1]."""


def preset_config(options: Any, presets: dict[str, Config], default: str, tokenizer: str) -> Config:
    """``tokenizer.options`` -> config dataclass: the preset named by ``preset`` (default
    ``default``), then field overrides; an unknown preset or key -> NarBenchError listing the valid ones."""
    options = dict(options or {})
    preset = options.pop("preset", default)
    if preset not in presets:
        raise NarBenchError(f"unknown tokenizer.options.preset '{preset}' for '{tokenizer}'; "
                            f"choose one of: {', '.join(presets)}")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(presets[preset]), options))
    except OmegaConfBaseException as err:
        valid = ", ".join(["preset"] + [f.name for f in fields(presets[preset])])
        msg = str(err).splitlines()[0]
        raise NarBenchError(f"bad tokenizer.options for '{tokenizer}': {msg}; valid options: {valid}") from None


def fields_for(config: Any, target: type[Config]) -> Config:
    """The ``target`` dataclass built from the same-named fields of dataclass ``config``."""
    names = {f.name for f in fields(target)}
    return target(**{k: v for k, v in asdict(config).items() if k in names})
