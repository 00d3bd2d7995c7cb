"""Paper-comparable metrics the way the ADM evaluator (guided-diffusion ``evaluations/evaluator.py``)
defines them, on torch-fidelity's TF-ported InceptionV3 (the 2015-12-05 graph ADM also runs), run in
full float32 (TF32 off). ``adm_protocol()`` returns these choices as data for the evaluation record.

- FID: Frechet distance of pool_3 (2048-d) statistics, the reference's from its stored ``mu`` /
  ``sigma``; computed by torch-fidelity's ``fid_statistics_to_metric`` (an eigenvalue form of
  ADM's ``sqrtm`` trace, equal up to round-off).
- sFID: the same on ADM's spatial features, ``mixed_6/conv`` (torch-fidelity's
  ``Mixed_6d.branch1x1``, post-ReLU) first 7 channels of 17x17, flattened in (H, W, C) order as
  ADM's NHWC reshape does: 2023-d, against ``mu_s`` / ``sigma_s``.
- Inception Score: on the bias-free logits (ADM multiplies pool_3 by the softmax weights only), over
  ADM's splits: consecutive chunks of 5,000 images in sample order, the last one holding the rest
  (see ``inception_score``).
- Precision / recall: ADM's k=3 manifold estimate on pool_3 features against the reference images
  (a point is inside a manifold if it lies within some member's distance to its 3rd nearest neighbour),
  with float16 squared distances (the default) in blocks of 10,000 x 10,000 as ADM's DistanceBlock.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from nar_bench.errors import NarBenchError
from nar_bench.metrics.adm_npz import (
    IMAGES_KEY,
    REFERENCE_STATS,
    check_images,
    images_header,
    iter_images,
    npz_keys,
    read_array,
    sha256_file,
    write_npz,
)
from nar_bench.metrics.cache import cache_root
from nar_bench.metrics.fidelity import inception_extractor, torch_fidelity
from nar_bench.nn.modes import tf32_disabled

SPATIAL_CHANNELS, SPATIAL_SIZE = 7, 17
SPATIAL_DIM = SPATIAL_CHANNELS * SPATIAL_SIZE * SPATIAL_SIZE  # 2023
POOL_DIM = 2048
IS_SPLIT_SIZE = 5000  # ADM's compute_inception_score(split_size=5000)
PR_NEIGHBORHOOD = 3  # ADM's ManifoldEstimator(nhood_sizes=(3,))
PR_BLOCK = 10000  # ADM's row_batch_size = col_batch_size: the blocks whose float16 overflow falls back to float32


def adm_protocol(half_distances: bool = True) -> dict[str, str | int | bool]:
    """The choices that define these metrics, as JSON-ready data for an evaluation record;
    ``half_distances`` is ``adm_metrics``'s (True: ADM's float16 distances)."""
    return {
        "evaluator": "guided-diffusion evaluations/evaluator.py",
        "inception": "torch-fidelity inception-v3-compat (TF graph 2015-12-05)",
        "inception_tf32": False,
        "fid_features": f"pool_3 ({POOL_DIM})",
        "sfid_features": f"mixed_6/conv first {SPATIAL_CHANNELS} channels, HWC ({SPATIAL_DIM})",
        "is_logits": "pool_3 x softmax weights, no bias",
        "is_split_size": IS_SPLIT_SIZE,
        "is_std": "population std over the splits; 0 for one split; ADM reports none",
        "pr_k": PR_NEIGHBORHOOD,
        "pr_distance_dtype": "float16" if half_distances else "float32",
        "pr_block_size": PR_BLOCK,
    }


@dataclass
class Features:
    """Inception features of N images: ``pool`` (N, 2048), ``spatial`` (N, 2023), ``logits`` (N, 1008)
    bias-free logits; float32 on CPU."""

    pool: Tensor
    spatial: Tensor
    logits: Tensor

    def __len__(self) -> int:
        return len(self.pool)

    @staticmethod
    def cat(parts: Sequence[Features]) -> Features:
        """The features of consecutive image batches, in order."""
        return Features(*(torch.cat([getattr(p, name) for p in parts]) for name in ("pool", "spatial", "logits")))


class InceptionFeatures:
    """torch-fidelity's ``inception-v3-compat`` from a local weights file, plus a hook for ADM's
    spatial features. ``weights_path`` None: ``$NAR_BENCH_INCEPTION_WEIGHTS`` or the cache's copy.
    The forward runs with TF32 off: full float32 convolutions and matmuls on Ampere+ GPUs too (TF32
    keeps 10 mantissa bits of their inputs)."""

    def __init__(self, weights_path: str | Path | None = None, device: str | torch.device = "cpu",
                 cache_dir: str | Path | None = None):
        options = {"weights_path": str(weights_path)} if weights_path else {}
        self.weights_path = inception_extractor(cache_root(cache_dir), **options).weights_path  # raises if missing
        try:
            model = torch_fidelity.FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048", "logits_unbiased"],
                feature_extractor_weights_path=str(self.weights_path))
        except Exception as err:  # torch.load / load_state_dict raise many types for a bad file
            raise NarBenchError(
                f"InceptionV3 weights '{self.weights_path}' cannot be loaded ({type(err).__name__}: "
                f"{str(err)[:200]}); the file is corrupt or not torch-fidelity's "
                "weights-inception-2015-12-05-6726825d.pth: download it again") from None
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self._spatial: Tensor | None = None
        # TF's mixed_6/conv is the 1x1 branch of the 4th 17x17 block (torch-fidelity's weight converter
        # maps mixed_6/conv/* onto Mixed_6d.branch1x1); BasicConv2d's output is already post-ReLU.
        self.model.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module, inputs, output: Tensor) -> None:
        # (B, 192, 17, 17) -> first 7 channels, NHWC order -> (B, 2023)
        self._spatial = output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(len(output), -1).float()

    @torch.no_grad()
    def __call__(self, images: Tensor | np.ndarray) -> Features:
        """images (B, H, W, 3) uint8 (numpy, ADM's layout) or (B, 3, H, W) uint8 tensor -> Features."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(check_images(images))).permute(0, 3, 1, 2)
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise NarBenchError(f"images must be (B, 3, H, W) uint8, got {images.dtype} {tuple(images.shape)}")
        with tf32_disabled():
            pool, logits = self.model(images.to(self.device))
        return Features(pool.cpu(), self._spatial.cpu(), logits.cpu())

    def extract(self, batches: Iterable[Tensor | np.ndarray], total: int | None = None,
                desc: str = "Inception features") -> Features:
        """Features of every image of ``batches`` (see ``__call__``), concatenated in order; the
        progress bar counts images of ``total``."""
        parts = []
        with tqdm(total=total, desc=desc, leave=False, unit="image") as bar:
            for batch in batches:
                parts.append(self(batch))
                bar.update(len(batch))
        if not parts:
            raise NarBenchError("no images to extract features from")
        return Features.cat(parts)


class StreamedFeatures:
    """Inception features of images handed over chunk by chunk (``add``: (n, H, W, 3) uint8, in
    file order), extracted on a worker thread while the caller goes on: ``SampleStore.assemble``
    writes each shard into the .npz while its features are computed. Chunks are re-cut into the
    batches ``iter_images(file, batch_size)`` reads, so ``result()`` equals the features
    ``evaluate_npz`` would extract from the written file. At most ``pending`` batches wait for the
    worker (memory stays bounded); ``seconds`` is the worker's busy time. The extractor is built at
    the first chunk, so an observer that sees no images costs nothing."""

    def __init__(self, weights_path: str | Path | None, device: str | torch.device, batch_size: int,
                 pending: int = 4):
        self.weights_path, self.device, self.batch_size, self.pending = weights_path, device, batch_size, pending
        self.extractor: InceptionFeatures | None = None
        self.buffer: np.ndarray | None = None  # the images of a batch not yet whole
        self.jobs: deque[Future] = deque()
        self.parts: list[Features] = []
        self.seconds = 0.0
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="inception-features")

    def add(self, images: np.ndarray) -> None:
        if self.extractor is None:
            self.extractor = InceptionFeatures(self.weights_path, self.device)
        if self.buffer is not None:  # a copy only where chunks do not split into whole batches
            images, self.buffer = np.concatenate([self.buffer, images]), None
        whole = len(images) - len(images) % self.batch_size
        for start in range(0, whole, self.batch_size):
            self._submit(images[start : start + self.batch_size])
        if whole < len(images):
            self.buffer = images[whole:]

    def _submit(self, batch: np.ndarray) -> None:
        while len(self.jobs) >= self.pending:
            self.parts.append(self.jobs.popleft().result())
        self.jobs.append(self.worker.submit(self._extract, batch))

    def _extract(self, batch: np.ndarray) -> Features:
        start = time.perf_counter()
        features = self.extractor(batch)
        self.seconds += time.perf_counter() - start
        return features

    def result(self) -> Features | None:
        """The features of every image added (None if none was), once the worker is done."""
        if self.buffer is not None:
            self._submit(self.buffer)
            self.buffer = None
        self.parts.extend(job.result() for job in self.jobs)
        self.jobs.clear()
        if not self.parts:
            return None
        return Features.cat(self.parts)

    def close(self) -> None:
        """Drops the batches not started and waits for the one running (after an error, say)."""
        for job in self.jobs:
            job.cancel()
        self.worker.shutdown(wait=True)


def statistics(features: Tensor) -> dict[str, np.ndarray]:
    """torch-fidelity's mean / covariance of features (N, D), in float64: {mu (D,), sigma (D, D)}."""
    if len(features) < 2:
        raise NarBenchError(f"statistics need at least 2 images, got {len(features)}")
    return torch_fidelity.metric_fid.fid_features_to_statistics(features.double())


def frechet_distance(stats_1: dict[str, np.ndarray], stats_2: dict[str, np.ndarray]) -> float:
    """torch-fidelity's FID of two {mu, sigma} (cast to float64: its dtypes must match)."""
    a = {key: np.asarray(stats_1[key], np.float64) for key in ("mu", "sigma")}
    b = {key: np.asarray(stats_2[key], np.float64) for key in ("mu", "sigma")}
    if a["mu"].shape != b["mu"].shape or a["sigma"].shape != b["sigma"].shape:
        raise NarBenchError(f"statistics of different dimensions: {a['mu'].shape} vs {b['mu'].shape}")
    return float(torch_fidelity.metric_fid.fid_statistics_to_metric(a, b, False)[torch_fidelity.KEY_METRIC_FID])


def _blocks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of ``size`` covering range(n), the last one shorter if size does not divide n."""
    return (slice(s, min(s + size, n)) for s in range(0, n, size))


def inception_score(logits: Tensor, split_size: int = IS_SPLIT_SIZE) -> tuple[float, float]:
    """(mean, std) of the Inception Score of logits (N, C) over ADM's splits: consecutive chunks of
    ``split_size`` images in sample order, no shuffling. The last chunk holds the remainder and counts
    like a full one (N = 7,500: chunks of 5,000 and 2,500, mean of their two scores); N <= 5,000 is one
    chunk of all N. A chunk's score is exp(mean_x KL(p(y|x) || p(y))), p(y) the chunk's mean of
    p(y|x) = softmax(logits); float64 throughout. ``mean`` is what ADM reports; ``std`` (population,
    over the chunks; 0.0 for one chunk) is ours."""
    if len(logits) == 0:
        raise NarBenchError("the Inception Score needs at least 1 image, got 0")
    logits = logits.double()
    p, log_p = logits.softmax(dim=1), logits.log_softmax(dim=1)
    scores = []
    for rows in _blocks(len(logits), split_size):
        log_marginal = p[rows].mean(dim=0, keepdim=True).log()
        kl = (p[rows] * (log_p[rows] - log_marginal)).sum(dim=1)
        scores.append(kl.mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def _squared_distances(u: Tensor, v: Tensor, half: bool) -> Tensor:
    """(n, m) squared Euclidean distances, ||u||^2 - 2 u.v + ||v||^2 clamped at 0. ``half``: in
    float16 like ADM's DistanceBlock, falling back to float32 if that overflows."""
    def compute(a: Tensor, b: Tensor) -> Tensor:
        # in place: one (n, m) buffer instead of four; -2x + aa is aa - 2x exactly (a power-of-two scale)
        d = (a @ b.T).mul_(-2).add_((a * a).sum(1, keepdim=True)).add_((b * b).sum(1)[None])
        return d.clamp_min_(0)

    if half:
        d = compute(u.half(), v.half())
        if torch.isfinite(d).all():
            return d.float()
    return compute(u.float(), v.float())


def manifold_radii(features: Tensor, k: int = PR_NEIGHBORHOOD, block: int = PR_BLOCK, half: bool = True) -> Tensor:
    """(N,) squared distance of each feature (N, D) to its k-th nearest other feature (the point
    itself, at distance 0, is the 0-th)."""
    if len(features) <= k:
        raise NarBenchError(f"the k={k} manifold needs more than {k} images, got {len(features)}")
    def nearest(d: Tensor) -> Tensor:  # the k + 1 smallest of each row, ascending (topk: ~10x kthvalue on CPU)
        return d.topk(min(k + 1, d.shape[1]), dim=1, largest=False).values

    radii = []
    for rows in _blocks(len(features), block):
        # the k + 1 nearest of the union are among each column block's k + 1 nearest: one block in memory
        candidates = torch.cat([nearest(_squared_distances(features[rows], features[cols], half))
                                for cols in _blocks(len(features), block)], dim=1)
        radii.append(nearest(candidates)[:, k])
    return torch.cat(radii)


def _inside(points: Tensor, centres: Tensor, radii: Tensor, block: int, half: bool) -> Tensor:
    """(len(points),) bool: is the point within radii[j] of some centre j?"""
    inside = torch.zeros(len(points), dtype=torch.bool, device=points.device)
    for rows in _blocks(len(points), block):
        for cols in _blocks(len(centres), block):
            d = _squared_distances(points[rows], centres[cols], half)
            inside[rows] |= (d <= radii[cols][None]).any(1)
    return inside


def precision_recall(reference: Tensor, samples: Tensor, k: int = PR_NEIGHBORHOOD, block: int = PR_BLOCK,
                     half: bool = True, device: str | torch.device = "cpu") -> tuple[float, float]:
    """ADM's improved precision / recall of sample features (N, D) against reference features (M, D):
    precision = fraction of samples inside the reference manifold, recall = fraction of reference
    points inside the sample manifold (k-NN radii, k=3). ``half``: float16 distances as ADM."""
    reference, samples = reference.to(device), samples.to(device)
    ref_radii = manifold_radii(reference, k, block, half)
    sample_radii = manifold_radii(samples, k, block, half)
    precision = _inside(samples, reference, ref_radii, block, half).double().mean().item()
    recall = _inside(reference, samples, sample_radii, block, half).double().mean().item()
    return precision, recall


@dataclass
class Reference:
    """An ADM reference batch: its file, SHA-256, image shape (N, H, W, 3) and stored statistics."""

    path: Path
    sha256: str
    shape: tuple[int, int, int, int]
    fid_stats: dict[str, np.ndarray]
    sfid_stats: dict[str, np.ndarray]


def load_reference(path: str | Path) -> Reference:
    """Reads and checks an ADM reference batch (images + mu/sigma + mu_s/sigma_s)."""
    path = Path(path).expanduser()
    what = "reference batch"
    if not path.is_file():
        raise NarBenchError(f"reference batch '{path}' not found: set eval.reference to an ADM-format .npz "
                            "(e.g. VIRTUAL_imagenet256_labeled.npz) or build one with `nar-bench reference`")
    keys = npz_keys(path, what)
    missing = [key for key in (IMAGES_KEY, *REFERENCE_STATS) if key not in keys]
    if missing:
        raise NarBenchError(f"reference batch '{path}' lacks {', '.join(missing)} (has: {', '.join(keys)}); a "
                            "reference needs arr_0 images and the Inception statistics mu, sigma, mu_s, sigma_s: "
                            "rebuild it with `nar-bench reference`")
    shape = images_header(path, what)
    fid = {"mu": read_array(path, "mu", what), "sigma": read_array(path, "sigma", what)}
    sfid = {"mu": read_array(path, "mu_s", what), "sigma": read_array(path, "sigma_s", what)}
    for name, stats, dim in (("mu/sigma", fid, POOL_DIM), ("mu_s/sigma_s", sfid, SPATIAL_DIM)):
        if stats["mu"].shape != (dim,) or stats["sigma"].shape != (dim, dim):
            raise NarBenchError(f"reference batch '{path}': {name} have shapes {stats['mu'].shape} / "
                                f"{stats['sigma'].shape}, expected ({dim},) / ({dim}, {dim})")
        bad = [key for key, array in stats.items() if not np.issubdtype(array.dtype, np.number)
               or not np.isfinite(array).all()]
        if bad:  # a NaN here makes every FID NaN, silently
            raise NarBenchError(f"reference batch '{path}': {name} hold NaN or infinite values ({', '.join(bad)}); "
                                "the file is corrupt or was built from broken features: rebuild it with "
                                "`nar-bench reference`")
    return Reference(path, sha256_file(path), shape, fid, sfid)


def _pool_cache(sha256: str, extractor: InceptionFeatures, cache_dir: str | Path | None) -> Path:
    return cache_root(cache_dir) / "adm" / f"{sha256[:16]}-{extractor.weights_path.stem}-pool.pt"


def _save_pool(path: Path, pool: Tensor | dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(pool, tmp)
    tmp.replace(path)


def reference_pool_features(reference: Reference, extractor: InceptionFeatures, batch_size: int,
                            cache_dir: str | Path | None = None) -> Tensor:
    """(M, 2048) pool features of the reference images (for precision / recall), cached by the
    file's hash and the weights file (``build_reference`` fills the cache for the files it writes)."""
    cache = _pool_cache(reference.sha256, extractor, cache_dir)
    if cache.is_file():
        return torch.load(cache)
    batches = iter_images(reference.path, batch_size, "reference batch")
    pool = extractor.extract(batches, reference.shape[0], "reference features").pool
    _save_pool(cache, pool)
    return pool


ADM_METRICS = ("fid", "sfid", "is", "pr")  # pr: precision and recall


def adm_metrics(samples: Features, reference: Reference, reference_pool: Tensor | None,
                metrics: Sequence[str] = ADM_METRICS, half_distances: bool = True,
                device: str | torch.device = "cpu") -> dict[str, float]:
    """fid, sfid, is, is_std, precision, recall (those of ``metrics``) of sample features against
    an ADM reference; ``reference_pool`` (M, 2048) is needed for "pr" only."""
    unknown = sorted(set(metrics) - set(ADM_METRICS))
    if unknown or not metrics:
        raise NarBenchError(f"unknown metric(s) {unknown or '(none given)'}; choose from: {', '.join(ADM_METRICS)}")
    out: dict[str, float] = {}
    if "fid" in metrics:
        out["fid"] = frechet_distance(statistics(samples.pool), reference.fid_stats)
    if "sfid" in metrics:
        out["sfid"] = frechet_distance(statistics(samples.spatial), reference.sfid_stats)
    if "is" in metrics:
        out["is"], out["is_std"] = inception_score(samples.logits)
    if "pr" in metrics:
        out["precision"], out["recall"] = precision_recall(reference_pool, samples.pool, half=half_distances,
                                                           device=device)
    return out


def _load_features(cache: tuple[Path, str] | None) -> Features | None:
    if cache is None or not cache[0].is_file():
        return None
    saved = torch.load(cache[0])
    return Features(saved["pool"], saved["spatial"], saved["logits"]) if saved.get("key") == cache[1] else None


def _save_features(cache: tuple[Path, str] | None, features: Features) -> None:
    if cache is not None:
        _save_pool(cache[0], {"key": cache[1], "pool": features.pool, "spatial": features.spatial,
                              "logits": features.logits})


def check_same_size(samples_shape: tuple[int, ...], reference: Reference) -> None:
    """Raises unless (N, H, W, 3) samples have the reference images' H x W."""
    if tuple(samples_shape[1:3]) != tuple(reference.shape[1:3]):
        raise NarBenchError(f"samples are {samples_shape[1]}x{samples_shape[2]} but the reference batch "
                            f"'{reference.path}' holds {reference.shape[1]}x{reference.shape[2]} images: score "
                            "against a reference of the same resolution (or build one with `nar-bench reference`)")


def evaluate_npz(samples_path: str | Path, reference: str | Path | Reference, weights_path: str | Path | None = None,
                 batch_size: int = 64, device: str | torch.device = "cpu", metrics: Sequence[str] = ADM_METRICS,
                 half_distances: bool = True, cache_dir: str | Path | None = None,
                 timings: dict[str, float] | None = None, features_cache: tuple[Path, str] | None = None,
                 features: Features | None = None, extractor: InceptionFeatures | None = None) -> dict[str, float]:
    """ADM's evaluator on two .npz files (the reference as a path or as loaded by ``load_reference``):
    fid, sfid, is, is_std, precision, recall (see ``adm_metrics``) and num_samples. ``timings`` (if
    given) gets ``feature_s``, the seconds the samples' features took (reading the file included; 0
    when read from the cache). ``features_cache`` (file, key of the samples): the samples' features
    are read from that file when it holds them for that key, the same weights file and device, else
    computed and kept there, so a run killed while scoring extracts them once. ``features``: the
    samples' features already extracted (``StreamedFeatures`` of the images written into the file),
    used and kept in ``features_cache`` instead of reading the file; no ``feature_s`` then.
    ``extractor``: the network already loaded from ``weights_path`` on ``device`` (else it is loaded)."""
    reference = reference if isinstance(reference, Reference) else load_reference(reference)
    shape = images_header(samples_path, "sample batch")
    check_same_size(shape, reference)
    extractor = extractor or InceptionFeatures(weights_path, device, cache_dir)
    start = time.perf_counter()
    if features_cache is not None:  # valid for these samples, these weights, this device
        features_cache = features_cache[0], f"{features_cache[1]}|{extractor.weights_path.resolve()}|{device}"
    if features is not None:
        if len(features) != shape[0]:
            raise ValueError(f"{len(features)} features given for the {shape[0]} images of '{samples_path}'")
        _save_features(features_cache, features)
    else:
        features = _load_features(features_cache)
        extracted = features is None
        if extracted:
            features = extractor.extract(iter_images(samples_path, batch_size, "sample batch"), shape[0],
                                         "sample features")
            _save_features(features_cache, features)
        if timings is not None:  # 0 when the features came from the cache: no extraction to time
            timings["feature_s"] = time.perf_counter() - start if extracted else 0.0
    ref_pool = reference_pool_features(reference, extractor, batch_size, cache_dir) if "pr" in metrics else None
    return {**adm_metrics(features, reference, ref_pool, metrics, half_distances, device),
            "num_samples": float(shape[0])}


def build_reference(images: Iterable[np.ndarray], num_images: int, image_shape: tuple[int, int, int],
                    out: str | Path, weights_path: str | Path | None = None, device: str | torch.device = "cpu",
                    cache_dir: str | Path | None = None) -> Path:
    """Writes an ADM reference batch: ``arr_0`` (N, H, W, 3) uint8 from chunks ``images`` (n_i, H, W, 3)
    (N = ``num_images``, (H, W, 3) = ``image_shape``) plus the Inception statistics mu/sigma (pool_3)
    and mu_s/sigma_s (spatial). Images stream into the file as their features are computed; the
    file appears only when complete."""
    extractor = InceptionFeatures(weights_path, device, cache_dir)
    parts: list[Features] = []

    def featurised() -> Iterator[np.ndarray]:
        with tqdm(total=num_images, desc="reference features", leave=False, unit="image") as bar:
            for chunk in images:
                parts.append(extractor(check_images(np.asarray(chunk), "reference images")))
                bar.update(len(chunk))
                yield chunk

    def stats() -> dict[str, np.ndarray]:
        fid = statistics(torch.cat([p.pool for p in parts]))
        sfid = statistics(torch.cat([p.spatial for p in parts]))
        return {"mu": fid["mu"], "sigma": fid["sigma"], "mu_s": sfid["mu"], "sigma_s": sfid["sigma"]}

    path = write_npz(out, stats, images=featurised(), num_images=num_images, image_shape=tuple(image_shape))
    _save_pool(_pool_cache(sha256_file(path), extractor, cache_dir), torch.cat([p.pool for p in parts]))
    return path
