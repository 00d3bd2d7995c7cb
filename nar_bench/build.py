"""Builds the configured tokenizer and paradigm by registry name."""

from __future__ import annotations

from omegaconf import DictConfig

import nar_bench.paradigms  # noqa: F401  (registers paradigms)
import nar_bench.tokenizers  # noqa: F401  (registers tokenizers)
from nar_bench.config import paradigm_options, transformer_config
from nar_bench.paradigms.base import Paradigm
from nar_bench.registry import PARADIGMS, TOKENIZERS
from nar_bench.tokenizers.base import Tokenizer


def build_tokenizer(cfg: DictConfig) -> Tokenizer:
    return TOKENIZERS[cfg.tokenizer.name].from_config(cfg)


def build_paradigm(cfg: DictConfig, tokenizer: Tokenizer, num_classes: int) -> Paradigm:
    model = transformer_config(cfg.model, tokenizer.vocab_size, num_classes)
    paradigm = PARADIGMS[cfg.model.paradigm](model, tokenizer.grid, paradigm_options(cfg.model))
    paradigm.attach_tokenizer(tokenizer)
    return paradigm
