"""Evaluation pipeline: class-balanced seeded generation, metrics, MLflow logging, DDP gathering.

Tiny everything: 16px images on a 4x4 token grid, the tiny model, a domain classifier trained for
a few steps into a tmp cache, a tmp SQLite MLflow store.
"""

import os
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from nar_bench.config import load_config
from nar_bench.errors import NarBenchError
from nar_bench.lit.module import GeneratorModule
from nar_bench.run.evaluate import balanced_labels, evaluate, generate_samples
from nar_bench.tracking.mlflow import make_logger
from tests.conftest import randomize_heads, run_python

TINY = ["model.size=tiny", "data.image_size=16", "data.grid_size=4", "trainer.accelerator=cpu",
        "eval.num_samples=32", "eval.batch_size=16", "eval.reference_size=64", "eval.samples_per_class=2",
        "eval.extractor_options.steps=20", "eval.extractor_options.width=8"]
METRIC_KEYS = {"fid", "is", "is_std", "kid", "kid_std", "precision", "recall", "f_score", "class_accuracy",
               "num_samples", "generate_seconds"}


pytestmark = pytest.mark.usefixtures("metrics_cache")


def tiny(tmp_path: Path, *overrides: str):
    cfg = load_config("experiments/demo.yaml", [*TINY, "model.paradigm=nar", *overrides,
                                                f"tracking.tracking_uri=sqlite:///{tmp_path}/mlruns.db",
                                                f"tracking.artifact_location={tmp_path}/art", "tracking.experiment=t"])
    torch.manual_seed(0)
    module = GeneratorModule(cfg, num_classes=16)
    randomize_heads(module.paradigm)  # zero-initialised heads would make every sample the same
    return cfg, module


def test_balanced_labels_give_every_class_the_same_count():
    labels = balanced_labels(35, 16)
    assert labels[:16].tolist() == list(range(16))
    assert set(torch.bincount(labels, minlength=16).tolist()) == {2, 3}


def test_generation_is_seeded_class_balanced_and_in_label_order(tmp_path):
    cfg, module = tiny(tmp_path)
    labels = balanced_labels(20, 16)
    images, out_labels = generate_samples(module, cfg, labels, batch_size=8)
    assert images.shape == (20, 3, 16, 16) and images.dtype == torch.uint8
    assert torch.equal(out_labels, labels)
    again, _ = generate_samples(module, cfg, labels, batch_size=8)
    assert torch.equal(images, again)
    other_seed, _ = generate_samples(module, OmegaConf.merge(cfg, {"seed": 1}), labels, batch_size=8)
    assert not torch.equal(images, other_seed)


def test_evaluate_returns_metrics_and_logs_them_with_artifacts_to_mlflow(tmp_path):
    cfg, module = tiny(tmp_path)
    logger = make_logger(cfg.tracking, "eval")
    metrics = evaluate(module, cfg, num_samples=32, batch_size=16, logger=logger, out_dir=tmp_path / "out")

    assert set(metrics) == METRIC_KEYS
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert metrics["num_samples"] == 32 and 0 <= metrics["class_accuracy"] <= 1 and metrics["fid"] > 0
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    run = client.get_run(logger.run_id)
    assert {f"eval/{key}" for key in METRIC_KEYS} <= set(run.data.metrics)
    assert run.data.metrics["eval/fid"] == pytest.approx(metrics["fid"])
    assert {a.path for a in client.list_artifacts(logger.run_id)} == {"eval_samples.png", "per_class_accuracy.csv"}
    per_class = pd.read_csv(tmp_path / "out" / "per_class_accuracy.csv")
    assert len(per_class) == 16 and (per_class["count"] == 2).all()  # 32 class-balanced samples
    assert per_class["correct"].sum() / 32 == pytest.approx(metrics["class_accuracy"])


def test_domain_extractor_on_other_data_is_a_clear_error_before_generating(tmp_path):
    cfg, module = tiny(tmp_path, "data.name=imagefolder")
    with pytest.raises(NarBenchError, match="eval.extractor=inception"):
        evaluate(module, cfg)


DDP_SCRIPT = """
import torch
import nar_bench
from nar_bench.config import load_config
from nar_bench.run.evaluate import balanced_labels, generate_samples
from nar_bench.lit.module import GeneratorModule
from nar_bench.nn.sampling import SamplingConfig

cfg = load_config("experiments/demo.yaml", {overrides!r})
torch.manual_seed(0)  # the same weights on both ranks
module = GeneratorModule(cfg, num_classes=16)
for name, p in module.named_parameters():
    if "output" in name:
        torch.nn.init.normal_(p, std=0.3)
labels = balanced_labels(11, 16)  # 6 + 5 labels: uneven ranks
images, out_labels = generate_samples(module, cfg, labels, batch_size=3)
if images is not None:
    # greedy decoding: an image depends only on its label, so rank 0 must hold exactly these
    expected = module.sample_images(labels, SamplingConfig(temperature=0.0))
    print("RESULT", torch.equal(out_labels, labels), torch.equal(images, expected))
"""


def test_ddp_generation_gathers_every_rank_onto_rank_zero_in_label_order(tmp_path):
    """Two CPU processes (gloo) through Lightning's own DDP launcher, as on a multi-GPU machine."""
    overrides = [*TINY, "model.paradigm=nar", "trainer.devices=2", "trainer.strategy=ddp",
                 "eval.sampling.temperature=0.0"]
    script = tmp_path / "ddp_generate.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(overrides=overrides)))
    root = Path(__file__).resolve().parents[1]
    done = run_python([str(script)], {**os.environ, "PYTHONPATH": str(root)}, cwd=root)
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert results == ["RESULT True True"], done.stdout[-2000:] + done.stderr[-2000:]
