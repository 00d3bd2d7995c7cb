"""Samples written as they are generated: ADM-format shards, resumable, assembled atomically.

``SampleStore(out, num_samples, shard_size, settings)`` splits sample indices 0..N-1 into
consecutive shards ``<out>.shards/shard_00000.npz`` ... (``arr_0`` images (n, H, W, 3) uint8,
``arr_1`` labels, ``index`` sample indices). Each shard is written atomically, so a shard file that
exists is complete: a killed run resumes with the missing shards only. ``assemble`` streams the
shards into ``out`` (ADM's ``arr_0`` / ``arr_1``), which appears only when every shard is there.
``settings`` (what decides the samples: checkpoint, sampling, seed, N, ...) are stored beside the
shards; resuming with other settings is an error instead of a silent mix of two runs. Once
assembled, the settings stay beside the file (``<out>.json``), so a later run with the same
settings takes the file as it is (``complete``): a run killed after its samples were written (while
scoring them) generates nothing again.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from nar_bench.errors import NarBenchError
from nar_bench.metrics.adm_npz import IMAGES_KEY, LABELS_KEY, atomic_path, check_images, check_samples, write_npz

SETTINGS_FILE = "settings.json"


def settings_path(out: str | Path) -> Path:
    """``<out>.json``: the settings an assembled sample file was generated with."""
    return Path(out).with_name(Path(out).name + ".json")


class SampleStore:
    def __init__(self, out: str | Path, num_samples: int, shard_size: int, settings: Mapping[str, Any] | None = None):
        if num_samples < 1 or shard_size < 1:
            raise NarBenchError(f"num_samples ({num_samples}) and shard_size ({shard_size}) must be positive")
        self.out = Path(out)
        self.shard_dir = self.out.with_name(self.out.name + ".shards")
        self.num_samples, self.shard_size = num_samples, shard_size
        self.settings = json.loads(json.dumps({**(settings or {}), "num_samples": num_samples,
                                               "shard_size": shard_size}))

    @property
    def settings_path(self) -> Path:
        """The settings of the assembled file, beside it (the shard folder holds its own copy)."""
        return settings_path(self.out)

    def complete(self) -> bool:
        """Whether ``out`` was assembled with these settings (the shard size aside: it does not change
        the samples); if so, a shard folder left behind by a kill during the clean-up is removed."""
        if not (self.out.is_file() and self.settings_path.is_file()):
            return False
        try:
            saved = json.loads(self.settings_path.read_text())
        except json.JSONDecodeError:
            return False
        if _without_shard_size(saved) != _without_shard_size(self.settings):
            return False
        shutil.rmtree(self.shard_dir, ignore_errors=True)
        return True

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.shard_size)

    def indices(self, shard: int) -> range:
        """Sample indices of shard ``shard``."""
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_samples))

    def shard_path(self, shard: int) -> Path:
        return self.shard_dir / f"shard_{shard:05d}.npz"

    def open(self) -> list[int]:
        """Creates the shard folder or checks that its shards were made with the same settings;
        returns the shards still to generate."""
        saved = self.shard_dir / SETTINGS_FILE
        if saved.is_file():
            previous = json.loads(saved.read_text())
            if previous != self.settings:
                changed = sorted(k for k in {*previous, *self.settings} if previous.get(k) != self.settings.get(k))
                raise NarBenchError(
                    f"'{self.shard_dir}' holds shards of a run with other settings (differing: {', '.join(changed)}); "
                    "delete that folder to start over, or write to another output file")
        else:
            self.shard_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(saved) as tmp:
                tmp.write_text(json.dumps(self.settings, indent=1, sort_keys=True))
        return self.pending()

    def finished(self) -> list[int]:
        return [k for k in range(self.num_shards) if self.shard_path(k).is_file()]

    def pending(self) -> list[int]:
        done = set(self.finished())
        return [k for k in range(self.num_shards) if k not in done]

    def write_shard(self, shard: int, images: np.ndarray, labels: np.ndarray) -> Path:
        """Stores shard ``shard``: images (n, H, W, 3) (or clips (n, T, H, W, 3)) uint8 and labels (n,)
        for its n indices."""
        n = len(self.indices(shard))
        check_samples(images, "samples")
        if len(images) != n or len(labels) != n:
            raise NarBenchError(f"shard {shard} holds {n} samples, got {len(images)} images and {len(labels)} labels")
        index = np.asarray(self.indices(shard), dtype=np.int64)
        return write_npz(self.shard_path(shard), {IMAGES_KEY: images, LABELS_KEY: np.asarray(labels), "index": index})

    def _load(self, shard: int, images: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        """(images, or None without ``images``: only the small arrays are read; labels) of a shard."""
        with np.load(self.shard_path(shard)) as npz:
            if not np.array_equal(npz["index"], np.asarray(self.indices(shard))):
                raise NarBenchError(f"{self.shard_path(shard)} holds other sample indices than shard {shard}")
            return npz[IMAGES_KEY] if images else None, npz[LABELS_KEY]

    def image_shape(self) -> tuple[int, ...]:
        """(H, W, 3) or (T, H, W, 3) of the stored samples, from shard 0's .npy header."""
        with zipfile.ZipFile(self.shard_path(0)) as zf, zf.open(f"{IMAGES_KEY}.npy") as f:
            fmt = np.lib.format
            read_header = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
            return tuple(read_header(f)[0][1:])

    def assemble(self, keep_shards: bool = False, observe: Callable[[np.ndarray], None] | None = None) -> Path:
        """Streams every shard into ``out`` (arr_0 images, arr_1 labels), atomically, and writes its
        settings beside it; then removes the shard folder unless ``keep_shards``. ``observe`` (if
        given) sees each shard's images, in file order, before they are written (a scorer extracts
        their features meanwhile instead of reading the file again)."""
        missing = self.pending()
        if missing:
            more = "..." if len(missing) > 5 else ""
            raise NarBenchError(f"cannot assemble '{self.out}': shards {missing[:5]}{more} are not written yet")
        labels = np.concatenate([self._load(k, images=False)[1] for k in range(self.num_shards)])

        def images() -> Iterator[np.ndarray]:
            for k in range(self.num_shards):
                shard = self._load(k)[0]
                if observe is not None:
                    observe(shard)
                yield shard

        write_npz(self.out, {LABELS_KEY: labels}, images=images(), num_images=self.num_samples,
                  image_shape=self.image_shape())
        with atomic_path(self.settings_path) as tmp:  # after the file: settings beside it mean it is complete
            tmp.write_text(json.dumps(self.settings, indent=1, sort_keys=True))
        if not keep_shards:
            shutil.rmtree(self.shard_dir)
        return self.out

    def iter_shards(self) -> Iterator[tuple[range, np.ndarray, np.ndarray]]:
        """(indices, images, labels) of every written shard, in order."""
        for k in self.finished():
            yield (self.indices(k), *self._load(k))


def _without_shard_size(settings: Mapping[str, Any]) -> dict:
    return {k: v for k, v in settings.items() if k != "shard_size"}


def write_pngs(images: np.ndarray, labels: np.ndarray, folder: str | Path, start: int = 0) -> None:
    """images (n, H, W, 3) uint8 -> ``folder/<index>_<label>.png`` (index from ``start``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(check_images(images), labels, strict=True)):
        Image.fromarray(image).save(folder / f"{start + i:06d}_{int(label)}.png")
