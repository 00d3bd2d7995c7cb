"""Lets torchvision's pure-Python parts import when its compiled ops cannot load.

On CPU-only machines PyPI's torchvision wheel is a CUDA build; next to a CPU torch its ``_C``
library fails to load (it links libc10_cuda), and torchvision then registers fake kernels for
``torchvision::nms``/``qnms`` unguarded, so ``import torchvision`` raises. torchmetrics (imported by
Lightning) and torch-fidelity import torchvision, so this runs before them. Defining the two op
schemas is enough; nar-bench never calls those ops. Where the ops load (any GPU machine) this does
nothing.
"""

from __future__ import annotations

import ctypes
import importlib.abc
import importlib.util
import sys
from pathlib import Path

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keeps the schema definitions alive


def ensure_torchvision_importable() -> None:
    global _library
    spec = importlib.util.find_spec("torchvision")
    if spec is None or _library is not None or not spec.submodule_search_locations:
        return
    compiled = sorted(Path(next(iter(spec.submodule_search_locations))).glob("_C*.so"))
    try:
        if compiled:
            ctypes.CDLL(str(compiled[0]))
            return
    except OSError:
        pass
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS.values():
        _library.define(schema)


class _ShimBeforeTorchvision(importlib.abc.MetaPathFinder):
    """Finds nothing itself: on the first import of torchvision it steps aside and runs the shim."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            ensure_torchvision_importable()
        return None


def run_shim_before_torchvision() -> None:
    """Arranges for ``ensure_torchvision_importable`` to run just before torchvision is first
    imported (at once if it already is), without importing torch now."""
    if "torchvision" in sys.modules:
        ensure_torchvision_importable()
    elif not any(isinstance(finder, _ShimBeforeTorchvision) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ShimBeforeTorchvision())
