"""Generation paradigms; importing this package registers every one of them by name."""

import importlib
import pkgutil

from omegaconf import DictConfig

from nar_bench.paradigms.base import Paradigm
from nar_bench.paradigms.model_config import paradigm_options, transformer_config
from nar_bench.registry import PARADIGMS
from nar_bench.tokenizers.base import CodeSpace

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def build_paradigm(cfg: DictConfig, codes: CodeSpace, num_classes: int) -> Paradigm:
    """The paradigm of ``cfg.model`` on the code space ``codes`` (the tokenizer's ``code_space``)."""
    model = transformer_config(cfg.model, codes.vocab_size, num_classes)
    return PARADIGMS[cfg.model.paradigm](model, codes, paradigm_options(cfg.model))
