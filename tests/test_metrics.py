"""Quality metrics: torch-fidelity agreement, FID sanity, Inception weights errors, class consistency.

A tiny domain classifier (a few dozen Lightning steps) is trained once per module into a tmp cache.
"""

from dataclasses import asdict

import pytest
import torch
from PIL import Image
from threadpoolctl import threadpool_limits
from torch.utils.data import Dataset, Subset

from nar_bench.data.imagefolder import ImageFolderDataset
from nar_bench.data.shapes import NUM_CLASSES, ShapesDataset
from nar_bench.errors import NarBenchError
from nar_bench.metrics import (
    DomainClassifierSpec,
    class_consistency,
    domain_classifier,
    evaluate_samples,
    reference_cache_id,
    to_uint8,
)
from nar_bench.metrics import domain as domain_module
from nar_bench.metrics.domain import TORCH_FIDELITY_NAME, domain_classifier_path
from nar_bench.metrics.fidelity import (  # torch_fidelity through nar_bench: see nar_bench/_torchvision_compat.py
    INCEPTION_WEIGHTS_ENV,
    RESULT_KEYS,
    URL_INCEPTION_V3,
    torch_fidelity,
)
from nar_bench.registry import FEATURE_EXTRACTORS

N = 128
SPEC = DomainClassifierSpec(steps=60, batch_size=32, width=8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Test machines have few, shared cores: oversubscribed torch / BLAS threads make the convs and
    torch-fidelity's numpy KID kernels ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    domain_classifier_path(SPEC, root)  # train once for the whole module
    return root


def real_images(split: str, n: int = N) -> torch.Tensor:
    data = ShapesDataset(n, split=split)
    return torch.stack([to_uint8(data[i][0]) for i in range(n)])


@pytest.fixture(scope="module")
def real():
    """(N, 3, 64, 64) uint8 test-split images and their labels."""
    return real_images("test"), torch.arange(N) % NUM_CLASSES


@pytest.fixture(scope="module")
def reference():
    return ShapesDataset(N, split="val")


def evaluate(samples, reference, cache, **kwargs):
    return evaluate_samples(samples, reference, extractor_options=asdict(SPEC), cache_dir=cache, cuda=False, **kwargs)


class Stack(Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def test_extractors_registered():
    assert {"domain", "inception"} <= set(FEATURE_EXTRACTORS)
    registered = torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY[TORCH_FIDELITY_NAME]
    assert registered is domain_module.DomainFeatureExtractor


def test_metrics_match_torch_fidelity_called_directly(cache, real, reference):
    samples = real_images("train")
    ours = evaluate(samples, reference, cache)
    reference_images = real_images("val")
    direct = torch_fidelity.calculate_metrics(
        input1=Stack(samples), input2=Stack(reference_images), fid=True, isc=True, kid=True, prc=True,
        feature_extractor=TORCH_FIDELITY_NAME, feature_extractor_weights_path=str(domain_classifier_path(SPEC, cache)),
        kid_subset_size=N, cache=False, cuda=False, verbose=False,
        save_cpu_ram=True,  # no DataLoader worker processes: they only slow a busy 2-core machine down
    )
    assert set(ours) == {RESULT_KEYS[k] for k in direct} == {"fid", "is", "is_std", "kid", "kid_std", "precision",
                                                            "recall", "f_score"}
    for key, value in direct.items():
        assert ours[RESULT_KEYS[key]] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # the reference passed as a uint8 tensor gives the same numbers as the dataset
    assert evaluate(samples, reference_images, cache) == pytest.approx(ours, rel=1e-5, abs=1e-6)


def test_reference_statistics_are_cached(cache, real, reference):
    samples, _ = real
    first = evaluate(samples, reference, cache, metrics=("fid",))
    name = reference_cache_id(reference)
    cached = sorted(p.name for p in (cache / "fidelity").glob(f"{name}-*"))
    assert any("stat-fid" in p for p in cached) and any("features" in p for p in cached)
    assert evaluate(samples, reference, cache, metrics=("fid",)) == first  # read back from the cache


def test_fid_real_vs_real_near_zero_and_noise_large(cache, real, reference):
    samples, _ = real
    same = evaluate(samples, samples, cache, metrics=("fid",))["fid"]
    other_real = evaluate(samples, reference, cache, metrics=("fid",))["fid"]
    noise = torch.randint(0, 256, samples.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    vs_noise = evaluate(noise, reference, cache, metrics=("fid",))["fid"]
    assert abs(same) < 1e-3
    assert vs_noise > 10 * other_real


def test_missing_inception_weights_fail_fast_without_download(cache, real, reference, monkeypatch, tmp_path):
    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    def no_work(*args, **kwargs):  # fast: the error comes before any network is built or image is read
        raise AssertionError("the missing weights were noticed only after the metrics started")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch_fidelity.feature_extractor_inceptionv3, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch_fidelity, "calculate_metrics", no_work)
    monkeypatch.setattr(torch_fidelity.feature_extractor_inceptionv3.FeatureExtractorInceptionV3, "__init__", no_work)
    samples, _ = real
    missing = tmp_path / "nowhere" / "inception.pth"
    cases = [({"weights_path": str(missing)}, None, missing),
             ({}, str(missing), missing),
             ({}, None, cache / "weights" / "weights-inception-2015-12-05-6726825d.pth")]
    for options, env, expected in cases:
        if env is None:
            monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
        else:
            monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, env)
        with pytest.raises(NarBenchError) as err:
            evaluate_samples(samples, reference, extractor="inception", extractor_options=options, cache_dir=cache)
        message = str(err.value)
        assert str(expected) in message and URL_INCEPTION_V3 in message and INCEPTION_WEIGHTS_ENV in message


def test_class_consistency_of_real_images(cache, real):
    samples, labels = real
    result = class_consistency(samples, labels, domain_classifier(SPEC, cache))
    assert result.accuracy > 3 / NUM_CLASSES  # well above chance after a few dozen steps
    table = result.per_class
    assert table.shape == (NUM_CLASSES, 4) and list(table.columns) == ["name", "count", "correct", "accuracy"]
    assert list(table.index) == list(range(NUM_CLASSES)) and (table["count"] == N // NUM_CLASSES).all()
    assert table["correct"].sum() / N == pytest.approx(result.accuracy)
    assert table.loc[0, "name"] == "red square"
    wrong_shape = (labels + 4) % NUM_CLASSES  # same colour, next shape: only a real classifier can tell
    assert class_consistency(samples, wrong_shape, domain_classifier(SPEC, cache)).accuracy < result.accuracy


def test_class_consistency_marks_classes_without_samples(cache, real):
    samples, labels = real
    result = class_consistency(samples[labels < 2], labels[labels < 2], domain_classifier(SPEC, cache))
    assert result.per_class["accuracy"].iloc[2:].isna().all() and result.per_class["count"].iloc[:2].gt(0).all()


def test_domain_classifier_trained_once_per_setting(cache, monkeypatch):
    monkeypatch.setattr(domain_module, "train_domain_classifier", lambda *a, **k: pytest.fail("retrained"))
    assert domain_classifier_path(SPEC, cache) == domain_classifier_path(DomainClassifierSpec(**asdict(SPEC)), cache)
    assert DomainClassifierSpec(seed=1).key() != DomainClassifierSpec().key()
    assert DomainClassifierSpec(steps=10).key() != DomainClassifierSpec().key()


def test_reference_cache_id_is_deterministic(real):
    samples, _ = real
    assert reference_cache_id(samples) == reference_cache_id(samples.clone())
    assert reference_cache_id(samples) != reference_cache_id(samples.flip(0))
    assert reference_cache_id(ShapesDataset(8, split="val")) != reference_cache_id(ShapesDataset(8, split="test"))
    assert reference_cache_id(Stack(samples)) is None  # unknown datasets are not cached
    shapes = ShapesDataset(8, split="val")
    first4 = reference_cache_id(Subset(shapes, range(4)))  # evaluate.reference_images takes the first N
    assert first4 == reference_cache_id(Subset(ShapesDataset(8, split="val"), range(4)))
    assert first4 not in (reference_cache_id(shapes), reference_cache_id(Subset(shapes, range(1, 5))))
    assert reference_cache_id(Subset(Stack(samples), range(4))) is None


def test_image_folder_reference_cache_id_follows_files_and_crop(tmp_path, real):
    samples, labels = real
    for i in range(6):
        (tmp_path / f"class{labels[i].item()}").mkdir(exist_ok=True)
        Image.fromarray(samples[i].permute(1, 2, 0).numpy()).save(tmp_path / f"class{labels[i].item()}" / f"{i}.png")
    folder_id = reference_cache_id(ImageFolderDataset(tmp_path, 32))
    assert folder_id == reference_cache_id(ImageFolderDataset(tmp_path, 32))
    assert folder_id != reference_cache_id(ImageFolderDataset(tmp_path, 16))
    (tmp_path / f"class{labels[0].item()}" / "0.png").rename(tmp_path / f"class{labels[0].item()}" / "renamed.png")
    assert folder_id != reference_cache_id(ImageFolderDataset(tmp_path, 32))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"metrics": ("fid", "ssim")}, "unknown metric"),
        ({"extractor": "clip"}, "unknown feature extractor"),
        ({"extractor_options": {"depth": 3}}, "unknown domain classifier option"),
        ({"extractor": "inception", "extractor_options": {"weigths_path": "x"}}, "unknown inception extractor option"),
    ],
)
def test_bad_arguments_raise_clear_errors(cache, real, reference, kwargs, match):
    samples, _ = real
    kwargs = {"extractor_options": asdict(SPEC), **kwargs}
    with pytest.raises(NarBenchError, match=match):
        evaluate_samples(samples, reference, cache_dir=cache, cuda=False, **kwargs)


def test_bad_images_raise_clear_errors(cache, real, reference):
    samples, labels = real
    with pytest.raises(NarBenchError, match="uint8"):
        evaluate(samples.float() / 127.5 - 1, reference, cache)
    with pytest.raises(NarBenchError, match="same size"):
        evaluate(samples[..., :32, :32], reference, cache)
    with pytest.raises(NarBenchError, match="labels"):
        class_consistency(samples, labels[:-1], domain_classifier(SPEC, cache))


def test_inception_runs_from_a_local_weights_file(cache, real, monkeypatch, tmp_path):
    """Wiring of the local-file path (random weights stand in for the official file)."""
    inception = torch_fidelity.FeatureExtractorInceptionV3
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: None)
    monkeypatch.setattr(inception, "load_state_dict", lambda self, state_dict: None)
    random_init = inception("inception-v3-compat", ["2048"], feature_extractor_weights_path="not read")
    monkeypatch.undo()
    weights = tmp_path / "inception.pth"
    torch.save(random_init.state_dict(), weights)
    samples, _ = real
    kwargs = dict(extractor="inception", extractor_options={"weights_path": str(weights)}, cache_dir=cache, cuda=False)
    # FID is left out only because sqrtm of 2048x2048 takes a minute on a busy CPU; it is wired like KID
    result = evaluate_samples(samples[:10], samples[10:20], metrics=("isc", "kid", "prc"), **kwargs)
    assert set(result) == {"is", "is_std", "kid", "kid_std", "precision", "recall", "f_score"}
    same = evaluate_samples(samples[10:20], samples[10:20], metrics=("prc",), **kwargs)
    assert same["precision"] == same["recall"] == 1.0
