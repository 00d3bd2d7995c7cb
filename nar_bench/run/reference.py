"""``nar-bench reference``: an ADM-format reference batch (``arr_0`` images + Inception ``mu`` /
``sigma`` / ``mu_s`` / ``sigma_s``) from an image folder or a dataset config, so that the synthetic
default and user data are scored exactly like ImageNet against ``VIRTUAL_imagenet256_labeled.npz``.

    nar-bench reference path/to/folder --out ref.npz --image-size 256 [--num-images 10000]
    nar-bench reference experiments/demo.yaml --out ref.npz [--split val] [data.num_val=2048 ...]
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

import nar_bench.data  # noqa: F401  (registers the datasets)
from nar_bench.data.imagefolder import ImageFolderDataset
from nar_bench.errors import NarBenchError
from nar_bench.images import to_uint8
from nar_bench.metrics.adm import build_reference
from nar_bench.registry import DATASETS
from nar_bench.tracking.provenance import guard_output

CHUNK = 64  # images per Inception batch


def source_dataset(source: str | Path, overrides: list[str] | None = None, image_size: int = 256,
                   split: str = "val") -> Dataset:
    """An image folder (ImageNet layout, ADM's center crop to ``image_size``) or split ``split`` of
    the dataset a config YAML names."""
    path = Path(source).expanduser()
    if path.is_dir():
        return ImageFolderDataset(path, image_size)
    if path.suffix not in (".yaml", ".yml"):
        raise NarBenchError(f"reference source '{source}' is neither an image folder nor a config YAML")
    from nar_bench.config import load_config

    cfg = load_config(path, overrides)
    return DATASETS[cfg.data.name](cfg.data, split)


def uint8_chunks(dataset: Dataset, num_images: int, chunk: int = CHUNK) -> Iterator[np.ndarray]:
    """(<= chunk, H, W, 3) uint8 chunks of the first ``num_images`` images of ``dataset``."""
    for start in range(0, num_images, chunk):
        images = []
        for i in range(start, min(start + chunk, num_images)):
            item = dataset[i]
            image = item[0] if isinstance(item, (tuple, list)) else item
            if not torch.is_tensor(image) or (not image.is_floating_point() and image.dtype != torch.uint8):
                raise NarBenchError(f"dataset items must be images, got {type(image).__name__} "
                                    f"{getattr(image, 'dtype', '')}; a reference needs an image dataset, not codes")
            images.append(image if image.dtype == torch.uint8 else to_uint8(image))
        yield torch.stack(images).permute(0, 2, 3, 1).numpy()


def make_reference(source: str | Path, out: str | Path, overrides: list[str] | None = None, image_size: int = 256,
                   split: str = "val", num_images: int | None = None, weights_path: str | Path | None = None,
                   device: str | None = None) -> Path:
    """Writes the reference batch ``out`` from ``source`` (see ``source_dataset``); all its images
    unless ``num_images``."""
    dataset = source_dataset(source, overrides, image_size, split)
    n = len(dataset) if num_images is None else min(num_images, len(dataset))
    if n < 2:
        raise NarBenchError(f"a reference batch needs at least 2 images, '{source}' has {len(dataset)}")
    first = next(uint8_chunks(dataset, 1))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return build_reference(uint8_chunks(dataset, n), n, first.shape[1:], out, weights_path, device)


def check_out(out: str | Path, overwrite: bool) -> Path:
    """``out`` if a reference batch may be written there: an .npz path, not an existing file unless
    ``overwrite`` (a reference is scored against; replacing one changes every later number), never
    over committed files (``guard_output``)."""
    out = Path(out)
    if out.suffix != ".npz" or out.is_dir():
        raise NarBenchError(f"--out '{out}': name the reference batch file with .npz, e.g. --out ref.npz")
    if out.exists() and not overwrite:
        raise NarBenchError(f"refusing to overwrite: '{out}' exists; choose another --out or pass --overwrite to "
                            "replace it")
    return guard_output(out, overwrite)


def main(args: argparse.Namespace) -> None:
    out = check_out(args.out, args.overwrite)
    if args.image_size < 1 or (args.num_images is not None and args.num_images < 2):
        raise NarBenchError(f"--image-size {args.image_size} / --num-images {args.num_images}: need an image size "
                            ">= 1 and at least 2 images (a covariance needs 2)")
    path = make_reference(args.source, out, args.overrides, args.image_size, args.split, args.num_images,
                          args.inception_weights)
    print(path)
