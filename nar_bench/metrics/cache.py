"""Where metric artefacts that are expensive but reproducible live: the trained domain
classifier, reference features and statistics. Everything here can be deleted and rebuilt."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CACHE_ENV = "NAR_BENCH_CACHE_DIR"
DEFAULT_CACHE_ROOT = "results/cache"


def cache_root(root: str | Path | None = None) -> Path:
    """``root`` if given, else ``$NAR_BENCH_CACHE_DIR``, else ``results/cache`` (git-ignored)."""
    return Path(root or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_ROOT)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file, so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
