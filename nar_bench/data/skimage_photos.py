"""A small real-photograph ImageFolder from the images that ship inside the scikit-image wheel.

No one here drew them: ``skimage.data`` holds a few photographs (an astronaut, a cat, coffee, a
rocket, ...) as files in the installed package, so real-data checks need no download. Each photo
becomes one class; its images are random square crops (random size and position), resized to
``image_size`` and written as PNGs in ImageNet layout (``<root>/<photo>/<i>.png``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from nar_bench.errors import NarBenchError

# colour photographs of distinct scenes in skimage/data (the wheel's bundled files, no pooch download)
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
          "motorcycle_left.png", "retina.jpg", "rocket.jpg")
CROP_FRACTION = (0.35, 0.8)  # crop side as a fraction of the photo's short side


def skimage_data_dir() -> Path:
    try:
        import skimage.data
    except ImportError:
        raise NarBenchError("the real-photo folder needs scikit-image: pip install scikit-image "
                            "(or pip install -e '.[dev]')") from None
    return Path(skimage.data.data_dir)


def available_photos(names: tuple[str, ...] = PHOTOS) -> dict[str, Path]:
    """{class name (file stem): path} of the photos present in the installed scikit-image."""
    folder = skimage_data_dir()
    found = {Path(name).stem: folder / name for name in names if (folder / name).is_file()}
    if not found:
        raise NarBenchError(f"none of {', '.join(names)} are in '{folder}'; reinstall scikit-image")
    return found


def build_photo_folder(root: str | Path, per_class: int, image_size: int = 64, num_classes: int | None = None,
                       seed: int = 0) -> Path:
    """Writes ``per_class`` random crops of each of ``num_classes`` (default: all available) photos
    to ``root/<photo>/<i>.png`` as (image_size, image_size) RGB; returns ``root``. Deterministic in
    ``seed``."""
    photos = available_photos()
    names = sorted(photos)[:num_classes]
    if num_classes is not None and len(names) < num_classes:
        raise NarBenchError(f"asked for {num_classes} photo classes, scikit-image ships {len(names)}: {names}")
    root = Path(root)
    for label, name in enumerate(names):
        with Image.open(photos[name]) as image:
            photo = image.convert("RGB")
        rng = np.random.default_rng([seed, label])
        short = min(photo.size)
        if short * CROP_FRACTION[0] < image_size:
            raise NarBenchError(f"'{photos[name]}' ({photo.size[0]}x{photo.size[1]}) is too small for "
                                f"{image_size}px crops; lower image_size")
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            side = int(rng.integers(round(short * CROP_FRACTION[0]), round(short * CROP_FRACTION[1]) + 1))
            left = int(rng.integers(0, photo.size[0] - side + 1))
            top = int(rng.integers(0, photo.size[1] - side + 1))
            crop = photo.crop((left, top, left + side, top + side)).resize((image_size, image_size), Image.BICUBIC)
            crop.save(root / name / f"{i:04d}.png")
    return root
