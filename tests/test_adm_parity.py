"""nar-bench's ADM metrics against an independent numpy re-implementation of guided-diffusion's
``evaluations/evaluator.py`` (``compute_inception_score``, ``FIDStatistics.frechet_distance``,
``ManifoldEstimator`` with k=3), on seeded synthetic features.

Dimensions are reduced (FID / sFID features 64 / 48, 256 classes for IS, P/R features 16): none of
the formulas depends on them.
Precision / recall use non-negative integer features of squared norm <= 1024, so every squared
distance and each of its intermediate sums is an integer <= 2048, exact in float16 (ADM's distances)
and float32: any correct implementation of ADM's comparisons counts the same points, and the
fractions must be equal, not close. P/R run at N = 1,000 and 7,500 only: at 50,000 the N^2 float16
distances take minutes on a CPU (no float16 BLAS) and the blocks change nothing for exact integers.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nar_bench.metrics.adm import Features, Reference, adm_metrics, adm_protocol, inception_score
from nar_bench.metrics.fidelity import torch_fidelity

SIZES = (1000, 7500, 50000)
POOL_DIM, SPATIAL_DIM, CLASSES = 64, 48, 256
REF_SIZE = 2000
PR_DIM, PR_MAX = 16, 7  # features in 0..7: squared norms <= 16 * 49 = 784

pytestmark = pytest.mark.usefixtures("single_thread")


# ---- reference implementation (numpy, from ADM's published algorithm) ----

def adm_inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    """ADM: softmax, then exp(mean KL(p(y|x) || p(y))) per consecutive chunk of ``split_size`` (the last
    one may be shorter), averaged over the chunks."""
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    preds = e / e.sum(axis=1, keepdims=True)
    scores = []
    for start in range(0, len(preds), split_size):
        part = preds[start:start + split_size]
        kl = part * (np.log(part) - np.log(part.mean(axis=0, keepdims=True)))
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores))


def adm_statistics(activations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ADM's compute_statistics: mean of the float32 activations (stays float32), np.cov (float64)."""
    return activations.mean(axis=0), np.cov(activations, rowvar=False)


def trace_sqrt_product(sigma_1: np.ndarray, sigma_2: np.ndarray) -> float:
    """tr sqrtm(sigma_1 sigma_2) of two covariances: sigma_1 sigma_2 = R (R sigma_2 R) R^-1 with
    R = sigma_1^(1/2) symmetric, so its eigenvalues are those of the symmetric PSD R sigma_2 R."""
    w, v = np.linalg.eigh(sigma_1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(root @ sigma_2 @ root), 0, None)).sum())


def adm_frechet_distance(mu_1, sigma_1, mu_2, sigma_2) -> float:
    diff = mu_1 - mu_2
    return float(diff @ diff + np.trace(sigma_1) + np.trace(sigma_2) - 2 * trace_sqrt_product(sigma_1, sigma_2))


def squared_distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Exact for the small integer features (float32 holds every integer involved: all < 2^24)."""
    u, v = u.astype(np.float32), v.astype(np.float32)
    return (u * u).sum(1)[:, None] - 2 * u @ v.T + (v * v).sum(1)[None]


def adm_radii(features: np.ndarray, k: int = 3, rows: int = 1000) -> np.ndarray:
    """ADM's manifold_radii: the k-th smallest of each row of all distances, the point itself (0) included."""
    return np.concatenate([np.partition(squared_distances(features[s:s + rows], features), k, axis=1)[:, k]
                           for s in range(0, len(features), rows)])


def adm_fraction_inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, rows: int = 1000) -> float:
    """ADM's evaluate_pr: a point counts if its distance to some centre j is <= radii[j]."""
    inside = np.concatenate([(squared_distances(points[s:s + rows], centres) <= radii[None]).any(axis=1)
                             for s in range(0, len(points), rows)])
    return float(np.mean(inside))


# ---- seeded synthetic features ----

def logits_of(n: int, seed: int) -> np.ndarray:
    """(n, 256) float32: confident predictions of uniform classes, as a good generator's."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, CLASSES), dtype=np.float32)
    logits[np.arange(n), rng.integers(0, CLASSES, n)] += 7
    return logits


def continuous_features(n: int, dim: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """(n, dim) float32, non-negative and correlated like post-ReLU Inception features."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(dim).standard_normal((dim, dim)) / np.sqrt(dim)
    return np.maximum(rng.standard_normal((n, dim)) @ mixing + 0.5 + shift, 0).astype(np.float32)


def integer_features(n: int, seed: int, p: float) -> np.ndarray:
    """(n, 16) float32 of integers in 0..7 (binomial(7, p) per coordinate)."""
    return np.random.default_rng(seed).binomial(PR_MAX, p, (n, PR_DIM)).astype(np.float32)


def reference_of(pool: np.ndarray, spatial: np.ndarray) -> Reference:
    fid = adm_statistics(pool.astype(np.float64))
    sfid = adm_statistics(spatial.astype(np.float64))
    return Reference(Path("synthetic.npz"), "0" * 64, (len(pool), 64, 64, 3), {"mu": fid[0], "sigma": fid[1]},
                     {"mu": sfid[0], "sigma": sfid[1]})


@pytest.fixture(scope="module")
def reference() -> Reference:
    return reference_of(continuous_features(REF_SIZE, POOL_DIM, 1), continuous_features(REF_SIZE, SPATIAL_DIM, 2))


@pytest.mark.parametrize("n", SIZES)
def test_fid_sfid_is_match_adm_formulas(n, reference):
    """Tolerance: rel 1e-4. ADM keeps the sample mean of float32 activations in float32, nar-bench in
    float64: up to ~5e-6 relative on these FIDs of ~0.5-1 (traces ~20), ~1e-16 on IS."""
    pool = continuous_features(n, POOL_DIM, 10 + n, shift=0.1)
    spatial = continuous_features(n, SPATIAL_DIM, 20 + n, shift=-0.1)
    logits = logits_of(n, 30 + n)
    ours = adm_metrics(Features(*map(torch.from_numpy, (pool, spatial, logits))), reference, None,
                       metrics=("fid", "sfid", "is"))
    expected = {
        "fid": adm_frechet_distance(*adm_statistics(pool), reference.fid_stats["mu"], reference.fid_stats["sigma"]),
        "sfid": adm_frechet_distance(*adm_statistics(spatial), reference.sfid_stats["mu"],
                                     reference.sfid_stats["sigma"]),
        "is": adm_inception_score(logits),
    }
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value, rel=1e-4), name
    assert ours["fid"] > 0.1 and ours["sfid"] > 0.1  # not a cancellation to ~0
    assert (ours["is_std"] == 0.0) == (n <= 5000)


# 50,000 in float32: CPU float16 matmuls would take minutes; the integer features are exact in both,
# so the counts must be identical either way (fp16 and its fp32 fallback are checked at 1,000 / 7,500)
@pytest.mark.parametrize(("n", "half"), [(1000, True), (7500, True), (1000, False), (50000, False)])
def test_precision_recall_equal_adm_counts_exactly(n, half):
    ref, samples = integer_features(REF_SIZE, 3, 0.5), integer_features(n, 40 + n, 0.6)
    assert max((ref ** 2).sum(1).max(), (samples ** 2).sum(1).max()) <= 1024  # exact in float16 (see module doc)
    reference = Reference(Path("synthetic.npz"), "0" * 64, (REF_SIZE, 64, 64, 3), {}, {})
    features = Features(torch.from_numpy(samples), torch.empty(n, 0), torch.empty(n, 0))
    ours = adm_metrics(features, reference, torch.from_numpy(ref), metrics=("pr",), half_distances=half)
    precision = adm_fraction_inside(samples, ref, adm_radii(ref))
    recall = adm_fraction_inside(ref, samples, adm_radii(samples))
    assert ours == {"precision": precision, "recall": recall}
    assert 0.05 < precision < 0.95 and 0.05 < recall < 0.95  # neither manifold swallows the other


def test_inception_score_splits_are_adms_5000_image_chunks():
    logits = torch.from_numpy(logits_of(50000, 5))
    old_10_splits = torch_fidelity.metric_isc.isc_features_to_metric(logits, splits=10, shuffle=False)
    # N = 50,000: ADM's 5,000-image chunks are exactly the old 10 splits
    mean, std = inception_score(logits)
    assert mean == pytest.approx(old_10_splits[torch_fidelity.KEY_METRIC_ISC_MEAN], rel=1e-12)
    assert std == pytest.approx(old_10_splits[torch_fidelity.KEY_METRIC_ISC_STD], rel=1e-9)
    # N = 7,500: chunks of 5,000 + 2,500, not 10 x 750
    mean, std = inception_score(logits[:7500])
    first, rest = inception_score(logits[:5000])[0], inception_score(logits[5000:7500])[0]
    assert (mean, std) == pytest.approx(((first + rest) / 2, abs(first - rest) / 2), rel=1e-12)
    old = torch_fidelity.metric_isc.isc_features_to_metric(logits[:7500], splits=10, shuffle=False)
    assert abs(mean / old[torch_fidelity.KEY_METRIC_ISC_MEAN] - 1) > 0.01
    # below 5,000 images: one chunk of all of them
    assert inception_score(logits[:3]) == pytest.approx((adm_inception_score(logits[:3].numpy()), 0.0), rel=1e-12)


def test_adm_protocol_records_the_choices_the_functions_make():
    protocol = adm_protocol()
    assert protocol["is_split_size"] == 5000 and protocol["pr_k"] == 3 and protocol["pr_block_size"] == 10000
    assert protocol["inception_tf32"] is False
    assert protocol["pr_distance_dtype"] == "float16"
    assert adm_protocol(half_distances=False)["pr_distance_dtype"] == "float32"
    assert json.loads(json.dumps(protocol)) == protocol
