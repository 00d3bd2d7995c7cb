"""Real data no one here drew, end to end through the command line: random crops of the photos that
ship inside scikit-image (one class per photo) -> train a VQ tokenizer -> extract codes -> train
tiny NAR and raster AR -> `nar-bench reference` -> `nar-bench evaluate` of both checkpoints.

CPU sizes: 16px images, 4 classes, a few optimisation steps, InceptionV3 with random weights (the
official file is not on test machines; `make real-photos-demo` runs the same chain at a real size).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from nar_bench.cli import main
from nar_bench.data.skimage_photos import build_photo_folder
from tests.conftest import tracking_overrides

pytestmark = pytest.mark.usefixtures("single_thread", "metrics_cache")

VQ = ["tokenizer.name=vq", "tokenizer.options.codebook_size=32", "tokenizer.options.code_dim=4",
      "tokenizer.options.ch=8", "tokenizer.options.ch_mult=[1,2]", "tokenizer.options.num_res_blocks=1",
      "tokenizer.options.z_channels=8", "tokenizer.options.norm_groups=4"]
STEPS = ["trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.log_every_n_steps=1", "optim.warmup_steps=1"]
CLASSES, PER_CLASS, SIZE = 4, 6, 16


def last_summary(capsys) -> dict[str, str]:
    return dict(item.split("=", 1) for item in capsys.readouterr().out.strip().splitlines()[-1].split())


def test_real_photos_tokenizer_codes_nar_and_ar_reference_and_evaluate(tmp_path, capsys, random_inception_weights):
    demo = str(Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml")
    photos = build_photo_folder(tmp_path / "photos", PER_CLASS, SIZE, num_classes=CLASSES)
    data = ["data.name=imagefolder", f"data.root={photos}", f"data.image_size={SIZE}", "data.grid_size=8",
            "data.batch_size=8", "data.num_val=4"]
    track = tracking_overrides(tmp_path)
    assert main(["train-tokenizer", demo, *VQ, *data, *STEPS, *track]) == 0
    vq = [*VQ, f"tokenizer.checkpoint={last_summary(capsys)['tokenizer_checkpoint']}"]
    assert main(["extract-codes", demo, str(tmp_path / "codes"), *vq, *data]) == 0
    assert last_summary(capsys)["num_classes"] == str(CLASSES)

    assert main(["reference", str(photos), "--out", str(tmp_path / "ref.npz"), "--image-size", str(SIZE),
                 "--inception-weights", str(random_inception_weights)]) == 0
    with np.load(tmp_path / "ref.npz") as ref:
        assert ref["arr_0"].shape == (CLASSES * PER_CLASS, SIZE, SIZE, 3)
        assert ref["mu"].shape == (2048,) and ref["sigma_s"].shape == (2023, 2023)

    codes = ["data.name=codes", f"data.root={tmp_path / 'codes'}", "tokenizer.name=codes", "data.batch_size=8",
             "model.size=tiny", "eval.samples_per_class=1"]
    scores = {}
    for paradigm in ("nar", "ar"):
        assert main(["train", demo, *codes, f"model.paradigm={paradigm}", *STEPS, *track,
                     f"tracking.run_name=photos-{paradigm}"]) == 0
        (ckpt,) = (tmp_path / "runs").glob(f"photos-{paradigm}-*/checkpoints/last.ckpt")
        assert main(["evaluate", demo, "--ckpt", str(ckpt), "--num-samples", "12", "--name", f"photos-{paradigm}",
                     *codes, f"model.paradigm={paradigm}", f"data.image_size={SIZE}", "eval.batch_size=6",
                     "eval.shard_size=6",
                     f"eval.reference={tmp_path / 'ref.npz'}",
                     f"eval.extractor_options.weights_path={random_inception_weights}", *track]) == 0
        record = json.loads((tmp_path / "runs" / f"photos-{paradigm}" / "eval.json").read_text())
        assert record["settings"]["paradigm"] == paradigm  # recorded as the checkpoint's, not the YAML's
        with np.load(record["samples"]) as samples:
            assert samples["arr_0"].shape == (12, SIZE, SIZE, 3)
            assert np.bincount(samples["arr_1"]).tolist() == [12 // CLASSES] * CLASSES
        scores[paradigm] = record["metrics"]
    for metrics in scores.values():
        assert metrics["fid"] > 0 and metrics["sfid"] > 0 and 0 <= metrics["precision"] <= 1
