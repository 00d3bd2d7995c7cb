"""ADM-format .npz files and ADM-style metrics (FID from stored stats, sFID, IS, k=3 precision /
recall) on torch-fidelity's InceptionV3 with random weights (the official file is not on test
machines); images are crops of the real photos that ship with scikit-image."""

import numpy as np
import pytest
import torch

from nar_bench.data.imagefolder import ImageFolderDataset
from nar_bench.data.skimage_photos import available_photos, build_photo_folder
from nar_bench.errors import NarBenchError
from nar_bench.metrics.adm import (
    SPATIAL_DIM,
    InceptionFeatures,
    StreamedFeatures,
    build_reference,
    evaluate_npz,
    frechet_distance,
    load_reference,
    precision_recall,
    statistics,
)
from nar_bench.metrics.adm_npz import images_header, iter_images, write_npz
from nar_bench.metrics.fidelity import INCEPTION_WEIGHTS_ENV, torch_fidelity
from nar_bench.metrics.sample_store import SampleStore
from nar_bench.nn.modes import tf32_disabled

N_REF, N_SAMPLES, SIZE = 12, 10, 32

pytestmark = pytest.mark.usefixtures("single_thread", "metrics_cache")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """(N_REF + N_SAMPLES, 32, 32, 3) uint8 crops of the scikit-image photos, classes interleaved."""
    root = build_photo_folder(tmp_path_factory.mktemp("photos"), per_class=6, image_size=SIZE, num_classes=8)
    ds = ImageFolderDataset(root, SIZE)
    order = np.argsort([i % 6 * 8 + label for i, (_, label) in enumerate(ds.samples)], kind="stable")
    return np.stack([ds.load(ds.samples[i][0]) for i in order[: N_REF + N_SAMPLES]])


@pytest.fixture(scope="module")
def reference(photos, random_inception_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.npz"
    ref = photos[:N_REF]
    return build_reference((ref[i:i + 6] for i in range(0, N_REF, 6)), N_REF, ref.shape[1:], out,
                           random_inception_weights)


def test_photo_folder_is_one_class_per_bundled_photo_and_deterministic(tmp_path):
    a = build_photo_folder(tmp_path / "a", per_class=2, image_size=16, num_classes=3, seed=1)
    b = build_photo_folder(tmp_path / "b", per_class=2, image_size=16, num_classes=3, seed=1)
    ds = ImageFolderDataset(a, 16)
    assert ds.class_names == sorted(available_photos())[:3] and len(ds) == 6
    assert all(np.array_equal(ds.load(p), ImageFolderDataset(b, 16).load(q))
               for (p, _), (q, _) in zip(ds.samples, ImageFolderDataset(b, 16).samples, strict=True))
    assert not np.array_equal(ds.load(ds.samples[0][0]), ds.load(ds.samples[1][0]))  # random crops differ


def test_streamed_npz_equals_numpy_savez_and_reads_back_in_chunks(tmp_path, photos):
    labels = np.arange(len(photos)) % 8
    write_npz(tmp_path / "a.npz", {"arr_1": labels}, images=(photos[i:i + 7] for i in range(0, len(photos), 7)),
              num_images=len(photos), image_shape=photos.shape[1:])
    with np.load(tmp_path / "a.npz") as npz:
        assert np.array_equal(npz["arr_0"], photos) and np.array_equal(npz["arr_1"], labels)
    np.savez(tmp_path / "b.npz", photos, labels)
    for path in (tmp_path / "a.npz", tmp_path / "b.npz"):
        assert images_header(path) == photos.shape
        assert np.array_equal(np.concatenate(list(iter_images(path, 5))), photos)


def test_a_failed_write_leaves_no_file(tmp_path, photos):
    def broken():
        yield photos[:4]
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_npz(tmp_path / "x.npz", images=broken(), num_images=8, image_shape=photos.shape[1:])
    assert list(tmp_path.iterdir()) == []


def test_spatial_features_are_mixed_6_conv_first_7_channels_in_hwc_order(photos, random_inception_weights, tmp_path):
    extractor = InceptionFeatures(random_inception_weights)
    seen = []
    hook = extractor.model.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    features = extractor(photos[:3])
    hook.remove()
    assert features.spatial.shape == (3, SPATIAL_DIM) == (3, 2023)
    full = seen[0]  # (3, 192, 17, 17), post-ReLU
    assert full.shape == (3, 192, 17, 17) and full.min() >= 0
    n, h, w, c = 2, 5, 11, 6
    assert features.spatial[n, (h * 17 + w) * 7 + c] == full[n, c, h, w]
    # the pool / logits features are torch-fidelity's own
    pool, logits = extractor.model(torch.from_numpy(photos[:3]).permute(0, 3, 1, 2))
    assert torch.equal(features.pool, pool) and torch.equal(features.logits, logits)
    assert features.pool.shape == (3, 2048) and features.logits.shape == (3, 1008)
    # a reference batch stores the statistics of exactly these features (sFID / FID = distances of them)
    stored = load_reference(build_reference([photos[:3]], 3, photos.shape[1:], tmp_path / "r.npz",
                                            random_inception_weights))
    for name, stats in (("spatial", stored.sfid_stats), ("pool", stored.fid_stats)):
        for key, value in statistics(getattr(features, name)).items():
            np.testing.assert_allclose(stats[key], value, rtol=1e-5, atol=1e-9)


def tf32_flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture
def restore_tf32_flags():
    before = tf32_flags()
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.usefixtures("restore_tf32_flags")
def test_tf32_disabled_turns_both_flags_off_and_restores_each_also_on_an_exception():
    for matmul, cudnn in ((True, True), (True, False), (False, True)):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
        with tf32_disabled():
            assert tf32_flags() == (False, False)
        assert tf32_flags() == (matmul, cudnn)
        with pytest.raises(RuntimeError, match="inside"), tf32_disabled():
            assert tf32_flags() == (False, False)
            raise RuntimeError("inside")
        assert tf32_flags() == (matmul, cudnn)


@pytest.mark.usefixtures("restore_tf32_flags")
def test_inception_features_run_the_network_with_tf32_off(photos, random_inception_weights):
    extractor = InceptionFeatures(random_inception_weights)
    seen = []
    extractor.model.register_forward_pre_hook(lambda module, inputs: seen.append(tf32_flags()))
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    extractor(photos[:2])
    assert seen == [(False, False)] and tf32_flags() == (True, True)


def test_fid_from_the_reference_file_equals_torch_fidelity_on_the_images(photos, reference, random_inception_weights,
                                                                         tmp_path):
    """Tolerance: rel 1e-4. The two paths run the same network and the same FID function, but
    torch-fidelity keeps float32 means and extracts in other batch sizes (round-off only). IS: ADM
    scores fewer than 5,000 images as one split, torch-fidelity's ``isc_splits=1``."""
    samples = photos[N_REF:]
    write_npz(tmp_path / "samples.npz", {"arr_0": samples})
    ours = evaluate_npz(tmp_path / "samples.npz", reference, random_inception_weights, batch_size=8,
                        metrics=("fid", "is", "pr"), half_distances=False)  # sFID: see the statistics below

    class Images(torch.utils.data.Dataset):
        def __init__(self, images):
            self.images = torch.from_numpy(images).permute(0, 3, 1, 2)

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.images[i]

    direct = torch_fidelity.calculate_metrics(
        input1=Images(samples), input2=Images(photos[:N_REF]), fid=True, isc=True, prc=True, cache=False,
        cuda=False, verbose=False, save_cpu_ram=True, samples_shuffle=False, batch_size=16, isc_splits=1,
        feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(random_inception_weights))
    assert set(ours) == {"fid", "is", "is_std", "precision", "recall", "num_samples"}
    assert ours["fid"] == pytest.approx(direct[torch_fidelity.KEY_METRIC_FID], rel=1e-4)
    assert ours["is"] == pytest.approx(direct[torch_fidelity.KEY_METRIC_ISC_MEAN], rel=1e-5)
    assert ours["precision"] == direct[torch_fidelity.KEY_METRIC_PRECISION]
    assert ours["recall"] == direct[torch_fidelity.KEY_METRIC_RECALL]
    assert ours["num_samples"] == N_SAMPLES


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_features_streamed_while_the_shards_are_assembled_are_the_written_files(device, photos, reference,
                                                                              random_inception_weights, tmp_path):
    """Shards of 3 images, Inception batches of 4 (a batch spans two shards), one batch waiting at
    most: the streamed features (extracted on a worker thread) are bit-identical to reading the
    assembled file back in batches of 4 (the same images in the same batches through the same
    network on the same device), and so are the metrics."""
    samples = photos[N_REF:]
    store = SampleStore(tmp_path / "samples.npz", len(samples), 3, {})
    store.open()
    for shard in range(store.num_shards):
        indices = list(store.indices(shard))
        store.write_shard(shard, samples[indices], np.zeros(len(indices), np.int64))
    streamed, seen = StreamedFeatures(random_inception_weights, device, batch_size=4, pending=1), []
    path = store.assemble(observe=lambda images: (seen.append(len(images)), streamed.add(images)))
    features = streamed.result()
    streamed.close()
    assert seen == [3, 3, 3, 1] and streamed.seconds > 0
    direct = InceptionFeatures(random_inception_weights, device).extract(iter_images(path, 4))
    assert all(torch.equal(getattr(features, k), getattr(direct, k)) for k in ("pool", "spatial", "logits"))
    read = evaluate_npz(path, reference, random_inception_weights, batch_size=4, device=device)
    assert evaluate_npz(path, load_reference(reference), random_inception_weights, batch_size=4, device=device,
                        features=features) == read
    idle = StreamedFeatures(random_inception_weights, device, batch_size=4)
    assert idle.result() is None and idle.extractor is None  # an observer that saw nothing loads nothing
    idle.close()


def test_frechet_distance_is_zero_for_equal_statistics_and_grows_with_a_shift():
    features = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    stats = statistics(features)
    assert abs(frechet_distance(stats, stats)) < 1e-9
    assert frechet_distance(stats, statistics(features + 1)) == pytest.approx(16, rel=1e-6)  # |mu shift|^2


def test_precision_recall_is_torch_fidelitys_k3_estimate():
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.randn(60, 32, generator=gen), torch.randn(50, 32, generator=gen) * 1.3 + 0.2
    expected = torch_fidelity.metric_prc.calculate_precision_recall_full(fake, real, neighborhood=3)
    # torch-fidelity averages in float32
    assert precision_recall(real, fake, half=False, block=16) == pytest.approx(expected, abs=1e-6)
    assert precision_recall(real, fake, half=False) == precision_recall(real, fake, half=False, block=7)
    for half in (False, True):
        assert precision_recall(real, real.clone(), half=half) == (1.0, 1.0)
        assert precision_recall(real, real + 100, half=half) == (0.0, 0.0)


def test_bad_inputs_raise_one_clear_error_each(photos, reference, random_inception_weights, tmp_path, monkeypatch):
    write_npz(tmp_path / "samples.npz", {"arr_0": photos[:12]})
    samples = tmp_path / "samples.npz"
    with pytest.raises(NarBenchError, match="reference batch .* not found"):
        evaluate_npz(samples, tmp_path / "missing.npz", random_inception_weights)
    np.savez(tmp_path / "nostats.npz", photos[:12])
    with pytest.raises(NarBenchError, match="lacks mu, sigma, mu_s, sigma_s"):
        load_reference(tmp_path / "nostats.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(NarBenchError, match="not a readable .npz"):
        load_reference(tmp_path / "junk.npz")
    write_npz(tmp_path / "small.npz", {"arr_0": photos[:12, :16, :16]})
    with pytest.raises(NarBenchError, match="samples are 16x16 but the reference batch .* holds 32x32"):
        evaluate_npz(tmp_path / "small.npz", reference, random_inception_weights)
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    with pytest.raises(NarBenchError, match="InceptionV3 weights not found"):
        evaluate_npz(samples, reference, tmp_path / "no-weights.pth")
    (tmp_path / "corrupt.pth").write_bytes(b"\x80\x02garbage")
    with pytest.raises(NarBenchError, match="cannot be loaded .* corrupt"):
        evaluate_npz(samples, reference, tmp_path / "corrupt.pth")
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(NarBenchError, match="cannot be loaded"):
        InceptionFeatures(tmp_path / "wrong.pth")
