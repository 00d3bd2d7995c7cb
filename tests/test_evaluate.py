"""Evaluation pipeline: class-balanced seeded generation, metrics, MLflow logging.

Tiny everything: 16px images on a 4x4 token grid, the tiny model, a domain classifier trained for
a few steps into a tmp cache, a tmp SQLite MLflow store.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from nar_bench.config import load_config
from nar_bench.errors import NarBenchError
from nar_bench.evaluation import evaluate
from nar_bench.evaluation.samples import generate_samples, sample_settings
from nar_bench.lit.module import GeneratorModule
from nar_bench.metrics.adm_npz import IMAGES_KEY, LABELS_KEY
from nar_bench.metrics.registry import SPEEDS
from nar_bench.tracking.mlflow import make_logger
from tests.conftest import randomize_heads

TINY = ["model.size=tiny", "data.image_size=16", "data.grid_size=4", "trainer.accelerator=cpu",
        "eval.num_samples=32", "eval.batch_size=16", "eval.reference_size=64", "eval.samples_per_class=2",
        "eval.extractor_options.steps=20", "eval.extractor_options.width=8"]
# the metrics, the record keys and every speed record but GPU memory (a CPU run)
METRIC_KEYS = {"fid", "is", "is_std", "kid", "kid_std", "precision", "recall", "f_score", "class_accuracy",
               "num_samples", "generate_seconds", "steps_per_image", *(set(SPEEDS) - {"peak_mem_gb"})}


pytestmark = pytest.mark.usefixtures("metrics_cache")


def tiny(tmp_path: Path, *overrides: str):
    cfg = load_config("experiments/demo.yaml", [*TINY, "model.paradigm=nar", *overrides,
                                                f"tracking.tracking_uri=sqlite:///{tmp_path}/mlruns.db",
                                                f"tracking.artifact_location={tmp_path}/art", "tracking.experiment=t"])
    torch.manual_seed(0)
    module = GeneratorModule(cfg, num_classes=16)
    randomize_heads(module.paradigm)  # zero-initialised heads would make every sample the same
    return cfg, module


def samples(cfg, module, out: Path) -> tuple[np.ndarray, np.ndarray]:
    path = generate_samples(module, cfg, 32, out, batch_size=8, settings=sample_settings(cfg, 16))
    with np.load(path) as npz:
        return npz[IMAGES_KEY], npz[LABELS_KEY]


def test_generation_is_seeded_class_balanced_and_in_label_order(tmp_path):
    cfg, module = tiny(tmp_path)
    images, labels = samples(cfg, module, tmp_path / "a.npz")
    assert images.shape == (32, 16, 16, 3) and images.dtype == np.uint8
    assert labels.tolist() == [i % 16 for i in range(32)]
    again, _ = samples(cfg, module, tmp_path / "b.npz")
    assert np.array_equal(images, again)
    other_seed, _ = samples(OmegaConf.merge(cfg, {"seed": 1}), module, tmp_path / "c.npz")
    assert not np.array_equal(images, other_seed)


def test_evaluate_returns_metrics_and_logs_them_with_artifacts_to_mlflow(tmp_path):
    cfg, module = tiny(tmp_path)
    logger = make_logger(cfg.tracking, "eval")
    metrics = evaluate(module, cfg, num_samples=32, batch_size=16, logger=logger, out_dir=tmp_path / "out")

    assert set(metrics) == METRIC_KEYS
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert metrics["steps_per_image"] == module.paradigm.num_steps  # the decoding steps it ran, logged too
    assert metrics["num_samples"] == 32 and 0 <= metrics["class_accuracy"] <= 1 and metrics["fid"] > 0
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    run = client.get_run(logger.run_id)
    assert {f"eval/{key}" for key in METRIC_KEYS} <= set(run.data.metrics)
    assert run.data.metrics["eval/fid"] == pytest.approx(metrics["fid"])
    assert run.data.metrics["progress/samples_done"] == 32 and run.data.metrics["progress/eta_s"] == 0
    assert {a.path for a in client.list_artifacts(logger.run_id)} == {"eval_samples.png", "per_class_accuracy.csv"}
    per_class = pd.read_csv(tmp_path / "out" / "per_class_accuracy.csv")
    assert len(per_class) == 16 and (per_class["count"] == 2).all()  # 32 class-balanced samples
    assert per_class["correct"].sum() / 32 == pytest.approx(metrics["class_accuracy"])


def test_domain_extractor_on_other_data_is_a_clear_error_before_generating(tmp_path):
    cfg, module = tiny(tmp_path, "data.name=imagefolder")
    with pytest.raises(NarBenchError, match="eval.extractor=inception"):
        evaluate(module, cfg)
