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
import importlib.util
from pathlib import Path

import torch

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
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS.values():
        _library.define(schema)
