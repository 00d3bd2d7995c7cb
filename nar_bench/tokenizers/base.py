"""Tokenizer interface: images in [-1, 1] <-> discrete codes on a grid."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, fields
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn

from nar_bench.errors import NarBenchError

Config = TypeVar("Config")


class Tokenizer(nn.Module, ABC):
    vocab_size: int
    grid: tuple[int, ...]

    @abstractmethod
    def encode(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) (video: (B, 3, T, H, W)) in [-1, 1] -> codes (B, N), raster order."""

    @abstractmethod
    def decode(self, codes: Tensor) -> Tensor:
        """codes (B, N) or (B, *grid) -> (B, 3, H, W) (video: (B, 3, T, H, W)) in [-1, 1]."""


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
