"""The ADM evaluator's ``.npz`` format, the way the field exchanges samples and reference batches.

- sample batch: ``arr_0`` (N, H, W, 3) uint8 images, optional ``arr_1`` (N,) int labels (what
  guided-diffusion's sampling script writes with ``np.savez(path, images, labels)``).
- reference batch (e.g. ``VIRTUAL_imagenet256_labeled.npz``): ``arr_0`` images plus Inception
  statistics ``mu`` (2048,), ``sigma`` (2048, 2048) for FID and ``mu_s`` (2023,), ``sigma_s``
  (2023, 2023) for sFID.

Files are written uncompressed (as ``np.savez``) and always atomically: to a temporary name in the
same folder, then renamed, so a killed writer never leaves a partial file under the final name.
``arr_0`` can be written and read in chunks, so 50,000 256px images (~10 GB) never sit in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from nar_bench.errors import NarBenchError

IMAGES_KEY, LABELS_KEY = "arr_0", "arr_1"
REFERENCE_STATS = ("mu", "sigma", "mu_s", "sigma_s")


def sha256_file(path: str | Path, chunk: int = 1 << 24) -> str:
    """Hex SHA-256 of a file, read in 16 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_images(images: np.ndarray, what: str = "images") -> np.ndarray:
    """Raises unless ``images`` is (N, H, W, 3) uint8 (ADM's NHWC layout)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise NarBenchError(f"{what} must be (N, H, W, 3) uint8 (ADM's layout), got {images.dtype} {images.shape}")
    return images


def check_samples(samples: np.ndarray, what: str = "samples") -> np.ndarray:
    """Raises unless ``samples`` are images (N, H, W, 3) or clips (N, T, H, W, 3), uint8, channels last."""
    if samples.dtype != np.uint8 or samples.ndim not in (4, 5) or samples.shape[-1] != 3:
        raise NarBenchError(f"{what} must be images (N, H, W, 3) or clips (N, T, H, W, 3) uint8, got "
                            f"{samples.dtype} {samples.shape}")
    return samples


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path next to ``path``; renames it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray] | Callable[[], Mapping[str, np.ndarray]] | None = None,
              images: Iterable[np.ndarray] | None = None, num_images: int | None = None,
              image_shape: tuple[int, ...] | None = None) -> Path:
    """Writes an ADM-format .npz atomically.

    arrays: small arrays stored as they are (``arr_1`` labels, ``mu``, ...), or a function returning
        them, called once the images are written (statistics computed while the images stream).
    images: chunks (n_i, H, W, 3) uint8 (or clips (n_i, T, H, W, 3)) streamed into ``arr_0``;
        ``num_images`` (sum of n_i) and ``image_shape`` ((H, W, 3) or (T, H, W, 3)) are needed up
        front for the .npy header. Omit to store no images,
        or pass ``arr_0`` in ``arrays``."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        if images is not None:
            if num_images is None or image_shape is None:
                raise ValueError("streaming images needs num_images and image_shape")
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                      "shape": (num_images, *image_shape)}
            written = 0
            with zf.open(f"{IMAGES_KEY}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_2_0(f, header)
                for chunk in images:
                    chunk = check_samples(np.asarray(chunk))
                    if chunk.shape[1:] != tuple(image_shape):
                        raise NarBenchError(f"image chunk of shape {chunk.shape[1:]} in a file of {image_shape} images")
                    f.write(np.ascontiguousarray(chunk).data)  # the array's buffer, not a copy of it
                    written += len(chunk)
            if written != num_images:
                raise NarBenchError(f"wrote {written} images into a file declared to hold {num_images}")
        arrays = arrays() if callable(arrays) else dict(arrays or {})
        for key, value in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)
    return Path(path)


def open_npz(path: str | Path, what: str = "file") -> np.lib.npyio.NpzFile:
    """``np.load`` of an .npz with a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise NarBenchError(f"{what} '{path}' not found")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise NarBenchError(f"{what} '{path}' is not a readable .npz ({err}); re-create or re-download it") from None


def npz_keys(path: str | Path, what: str = "file") -> list[str]:
    with open_npz(path, what) as npz:
        return list(npz.files)


def images_header(path: str | Path, what: str = "file") -> tuple[int, int, int, int]:
    """Shape (N, H, W, 3) of ``arr_0`` from its .npy header, without reading the images."""
    with _open_member(path, IMAGES_KEY, what) as f:
        shape, fortran, dtype = _read_header(f)
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise NarBenchError(f"{what} '{path}': arr_0 must be (N, H, W, 3) uint8 images, got {dtype} {shape}")
    return tuple(shape)


def samples_header(path: str | Path, what: str = "file") -> tuple[int, ...]:
    """Shape of ``arr_0`` (images (N, H, W, 3) or clips (N, T, H, W, 3)) from its .npy header."""
    with _open_member(path, IMAGES_KEY, what) as f:
        shape, fortran, dtype = _read_header(f)
    if dtype != np.uint8 or len(shape) not in (4, 5) or shape[-1] != 3:
        raise NarBenchError(f"{what} '{path}': arr_0 must be images (N, H, W, 3) or clips (N, T, H, W, 3) uint8, "
                            f"got {dtype} {shape}")
    return tuple(shape)


def iter_images(path: str | Path, batch_size: int, what: str = "file") -> Iterator[np.ndarray]:
    """Chunks (<= batch_size, H, W, 3) uint8 of ``arr_0``, streamed from the file."""
    images_header(path, what)
    return iter_samples(path, batch_size, what)


def iter_samples(path: str | Path, batch_size: int, what: str = "file") -> Iterator[np.ndarray]:
    """Chunks (<= batch_size, ...) uint8 of ``arr_0`` (images or clips), streamed from the file."""
    n, *rest = samples_header(path, what)
    item = int(np.prod(rest))
    with _open_member(path, IMAGES_KEY, what) as f:
        _, fortran, _ = _read_header(f)
        if fortran:  # not streamable in C order; never written by ADM or nar-bench, but legal .npy
            with open_npz(path, what) as npz:
                data = np.ascontiguousarray(npz[IMAGES_KEY])
            yield from (data[i:i + batch_size] for i in range(0, n, batch_size))
            return
        for start in range(0, n, batch_size):
            count = min(batch_size, n - start)
            data = f.read(count * item)
            if len(data) != count * item:
                raise NarBenchError(f"{what} '{path}' is truncated: arr_0 ends after {start} of {n} images")
            yield np.frombuffer(data, np.uint8).reshape(count, *rest)


def read_array(path: str | Path, key: str, what: str = "file") -> np.ndarray:
    with open_npz(path, what) as npz:
        if key not in npz.files:
            raise NarBenchError(f"{what} '{path}' has no '{key}' (keys: {', '.join(npz.files)})")
        try:
            return npz[key]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # truncated or corrupt member
            raise NarBenchError(f"{what} '{path}': '{key}' cannot be read ({str(err)[:120]}); the file is corrupt or "
                                "truncated: re-create or re-download it") from None


@contextlib.contextmanager
def _open_member(path: str | Path, key: str, what: str):
    path = Path(path)
    if not path.is_file():
        raise NarBenchError(f"{what} '{path}' not found")
    try:
        with zipfile.ZipFile(path) as zf:
            if f"{key}.npy" not in zf.namelist():
                raise NarBenchError(f"{what} '{path}' has no '{key}' (an ADM .npz stores its images as arr_0)")
            with zf.open(f"{key}.npy") as f:
                yield f
    except zipfile.BadZipFile as err:
        raise NarBenchError(f"{what} '{path}' is not a readable .npz ({err}); re-create or re-download it") from None


def _read_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise NarBenchError(f".npy format version {version} is not supported (1.0 and 2.0 are what numpy writes)")
