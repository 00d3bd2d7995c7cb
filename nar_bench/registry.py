"""Name -> class registries, so every box of the pipeline is chosen by a config string."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nar_bench.errors import NarBenchError


class Registry(dict):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: registers ``obj`` under ``name``; a class also gets ``name`` as its ``name``
        attribute, so the config string is spelled once."""

        def add(obj: Any) -> Any:
            if name in self:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self[name] = obj
            if isinstance(obj, type):
                obj.name = name
            return obj

        return add

    def __missing__(self, name: str) -> Any:
        raise NarBenchError(f"unknown {self.kind} '{name}'; choose one of: {', '.join(sorted(self))}")


PARADIGMS = Registry("paradigm")
TOKENIZERS = Registry("tokenizer")
DATASETS = Registry("dataset")
FEATURE_EXTRACTORS = Registry("feature extractor")
