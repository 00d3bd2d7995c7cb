"""Class-labelled image folders in the ImageNet layout ("imagefolder").

``data.root`` holds one sub-folder per class (``root/<class>/*.jpg|png``), or ``train/`` and
``val/`` folders that each do. Labels are the class folders' indices in sorted order (the
torchvision ``ImageFolder`` convention, hence ImageNet's usual class ids). Validation uses at most
``data.num_val`` evenly spaced images of ``val/``; without a ``val/`` folder they come from the
training folder, so val/loss then measures fit, not generalisation.

Images get ADM's / LlamaGen's center crop (``center_crop_arr``): halve with a box filter while the
short side is at least twice ``data.image_size``, bicubic-resize the short side to it, crop the
centre square. Images smaller than ``data.image_size`` are an error unless
``data.upscale_small_images`` (then they are upscaled, as ADM does).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from nar_bench.errors import NarBenchError
from nar_bench.registry import DATASETS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def center_crop_arr(image: Image.Image, size: int) -> np.ndarray:
    """RGB PIL image -> uint8 (size, size, 3): ADM's center crop with box-filter pre-downsampling."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def list_classes(folder: Path) -> list[str]:
    """Sorted class sub-folder names of ``folder``."""
    if not folder.is_dir():
        raise NarBenchError(f"image folder '{folder}' not found; set data.root to a folder with one "
                            "sub-folder of images per class (ImageNet layout: <root>/<class>/*.jpg)")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise NarBenchError(f"image folder '{folder}' has no class sub-folders; put each class's images in "
                            f"its own folder, e.g. {folder}/<class>/0001.jpg")
    return classes


def scan_classes(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(sorted class names, [(image path, label)] sorted by class then file name)."""
    classes = list_classes(folder)
    samples = []
    for label, name in enumerate(classes):
        files = sorted(e.path for e in os.scandir(folder / name)
                       if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise NarBenchError(f"class folder '{folder / name}' has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                                "add images or remove the folder")
        samples += [(path, label) for path in files]
    return classes, samples


def unreadable(path: str) -> str | None:
    """Why the image file at ``path`` cannot be opened (no permission, not an image), or None. Reads
    its header only: a file truncated further in fails when loaded, naming the file too."""
    try:
        with Image.open(path):
            return None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:  # PIL: SyntaxError for some broken files
        return str(err).replace(f" {path!r}", "").replace(f" '{path}'", "")


def check_readable(paths: list[str], folder: Path) -> None:
    """NarBenchError naming the first unreadable image of ``paths`` (and how many there are), so a
    bad file fails before training, not in its middle. Headers are read in threads (I/O bound)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        problems = [(path, why) for path, why in zip(paths, pool.map(unreadable, paths, chunksize=64), strict=True)
                    if why is not None]
    if problems:
        path, why = problems[0]
        more = f" ({len(problems)} unreadable files in '{folder}')" if len(problems) > 1 else ""
        raise NarBenchError(f"cannot read image '{path}' ({why}){more}; delete or replace the file")


class ImageFolderDataset(Dataset):
    """Images in [-1, 1], (3, S, S) float32, and their class labels. Every listed file is checked to
    open as an image when the dataset is made (``check_readable``)."""

    def __init__(self, folder: str | Path, image_size: int, upscale_small: bool = False,
                 limit: int | None = None):
        self.folder, self.image_size, self.upscale_small = Path(folder), image_size, upscale_small
        self.class_names, self.samples = scan_classes(self.folder)
        if limit is not None and limit < len(self.samples):  # evenly spaced, so every class stays in
            keep = np.linspace(0, len(self.samples) - 1, limit).round().astype(int)
            self.samples = [self.samples[i] for i in keep]
        check_readable([path for path, _ in self.samples], self.folder)
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, path: str) -> np.ndarray:
        """uint8 (S, S, 3) center crop of the image file at ``path``."""
        try:
            with Image.open(path) as image:
                if min(image.size) < self.image_size and not self.upscale_small:
                    w, h = image.size
                    raise NarBenchError(
                        f"image '{path}' is {w}x{h} px, smaller than data.image_size {self.image_size}; remove "
                        "it, lower data.image_size, or set data.upscale_small_images=true to upscale it")
                # RGB first, as torchvision's loader: palette / grey / CMYK files then resize alike
                return center_crop_arr(image.convert("RGB"), self.image_size)
        except (UnidentifiedImageError, OSError, SyntaxError) as err:  # PIL: SyntaxError for some broken files
            raise NarBenchError(f"cannot read image '{path}' ({err}); delete or replace the file") from None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        arr = self.load(path)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 127.5 - 1.0, label


def split_folder(root: Path, split: str) -> Path:
    """``root/train`` / ``root/val`` when ``root/train`` exists, else ``root`` for every split."""
    if (root / "train").is_dir():
        val = root / "val"
        return val if split != "train" and val.is_dir() else root / "train"
    return root


@DATASETS.register("imagefolder")
def imagefolder(data_cfg, split: str) -> ImageFolderDataset:
    if not data_cfg.root:
        raise NarBenchError("data.root is not set; point it at an image folder (ImageNet layout: <root>/<class>/*.jpg)")
    root = Path(data_cfg.root).expanduser()
    folder = split_folder(root, split)
    limit = None if split == "train" else data_cfg.num_val
    ds = ImageFolderDataset(folder, data_cfg.image_size, data_cfg.upscale_small_images, limit)
    if split != "train" and folder != split_folder(root, "train"):
        if ds.class_names != list_classes(split_folder(root, "train")):  # names only: no listing of every file
            raise NarBenchError(f"class folders of '{folder}' differ from the training folder's; give val/ "
                                "the same class sub-folders as train/")
    return ds
