"""Tokenizers; importing this package registers them by name."""

import importlib
import pkgutil

from omegaconf import DictConfig

from nar_bench.registry import TOKENIZERS
from nar_bench.tokenizers.base import Tokenizer
from nar_bench.tokenizers.checks import check_geometry

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def build_tokenizer(cfg: DictConfig) -> Tokenizer:
    """The tokenizer named by ``cfg.tokenizer.name``, from its ``from_config`` (after the geometry check:
    one clear error, in every verb that builds one)."""
    check_geometry(cfg)
    return TOKENIZERS[cfg.tokenizer.name].from_config(cfg)
