"""Evaluation as a library: the metric registry is the one list every reader uses, and video
evaluates end to end (train -> nar-bench evaluate -> FVD) on the embedded moving shapes."""

import json
import re

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from nar_bench.cli import main as cli
from nar_bench.config import load_config
from nar_bench.errors import NarBenchError
from nar_bench.evaluation import check_eval_inputs
from nar_bench.metrics.registry import METRICS, RECORD_KEYS, check_reported, metric_names, spreads
from nar_bench.tracking.parent_summary import best_groups
from nar_bench.tracking.report import summarize, tidy_runs, write_report
from tests.conftest import tracking_overrides
from tests.test_sweep_report import TINY as SWEEP_TINY

pytestmark = pytest.mark.usefixtures("metrics_cache")

VIDEO_TINY = ["data.frames=2", "data.image_size=8", "data.grid_size=4", "data.batch_size=4", "data.num_val=8",
              "model.n_layers=1", "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.accelerator=cpu",
              "eval.samples_per_class=1", "eval.batch_size=16", "eval.reference_size=32",
              "eval.extractor_options.steps=20", "eval.extractor_options.width=8"]


def test_every_metric_declares_direction_data_and_needs_and_spreads_are_not_metrics():
    assert metric_names()[:5] == ["fid", "sfid", "is", "precision", "recall"]  # display order = registration
    assert {"fid", "sfid", "is", "precision", "recall", "kid", "class_accuracy", "fvd"} <= set(METRICS)
    for spec in METRICS.values():
        assert spec.direction in ("lower", "higher") and spec.data and spec.needs
    assert METRICS["fvd"].data == ("video",) and METRICS["class_accuracy"].needs == ("classifier",)
    assert spreads() == {"is_std": "is", "kid_std": "kid"} and not set(spreads()) & set(METRICS)
    check_reported({"fid", "is_std", *RECORD_KEYS}, "a scorer")
    with pytest.raises(ValueError, match="unregistered metric.*'bleu'"):
        check_reported({"fid", "bleu"}, "a scorer")


def test_reports_and_best_tags_follow_the_registry_sfid_included(tmp_path):
    table = pd.DataFrame({"point": ["a/s0", "a/s1", "b/s0", "b/s1"], "variant": ["a", "a", "b", "b"],
                          "seed": [0, 1, 0, 1], "fid": [3.0, 3.2, 2.0, 2.2], "sfid": [5.0, 5.5, 6.0, 6.5],
                          "is": [10.0, 11.0, 9.0, 9.5], "is_std": [0.1] * 4, "num_samples": [64] * 4})
    summary = summarize(table, ["variant"])
    paths = write_report(table, [], tmp_path, {"command": "test"})
    header = paths["summary_md"].read_text().splitlines()[-4]
    assert re.findall(r"\b(fid|sfid|is)\b", header) == ["fid", "sfid", "is"]  # registry order
    # lower FID / sFID and higher IS are better, as each metric declares
    assert best_groups(summary, ["variant"]) == {"fid": "b", "sfid": "a", "is": "a"}
    runs = pd.DataFrame({"run_id": ["r1"], "status": ["FINISHED"], "start_time": [pd.Timestamp(0)],
                         "metrics.eval/recall": [0.5], "metrics.eval/sfid": [4.0], "metrics.eval/fid": [2.0]})
    tidy, _ = tidy_runs(runs)
    assert [c for c in tidy.columns if c in METRICS] == ["fid", "sfid", "recall"]


def test_a_video_config_with_an_image_extractor_or_no_i3d_weights_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("NAR_BENCH_I3D_WEIGHTS", raising=False)
    cfg = load_config("experiments/video_nar.yaml", [*VIDEO_TINY, "eval.extractor=domain"])
    with pytest.raises(NarBenchError, match="generates video .* set eval.extractor to one of video_domain, i3d"):
        check_eval_inputs(cfg)
    cfg = load_config("experiments/video_nar.yaml", [*VIDEO_TINY[:-2], "eval.extractor=i3d"])
    with pytest.raises(NarBenchError, match="NAR_BENCH_I3D_WEIGHTS"):
        check_eval_inputs(cfg)
    with pytest.raises(NarBenchError, match=r"unknown i3d extractor option\(s\) \['steps', 'width'\]"):
        check_eval_inputs(load_config("experiments/video_nar.yaml", [*VIDEO_TINY, "eval.extractor=i3d"]))
    cfg = load_config("experiments/video_nar.yaml", [*VIDEO_TINY, f"eval.reference={tmp_path / 'ref.npz'}"])
    with pytest.raises(NarBenchError, match="generates video .* drop eval.reference"):
        check_eval_inputs(cfg)


def test_video_trains_with_its_evaluation_and_nar_bench_evaluate_prints_fvd(tmp_path, capsys):
    """The embedded video default end to end on CPU: FVD on the moving-shapes classifier's features,
    class-balanced clips with per-sample seeds, in the training run (eval.after_training) and from
    the run's checkpoint through the verb (one FINISHED MLflow run, eval.json)."""
    overrides = [*VIDEO_TINY, *tracking_overrides(tmp_path)]
    assert cli(["train", "experiments/video_nar.yaml", *overrides, "eval.after_training=true",
                "eval.num_samples=32", "tracking.run_name=video"]) == 0
    (ckpt,) = tmp_path.glob("runs/video-*/checkpoints/last.ckpt")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    (train_run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert train_run.data.metrics["eval/fvd"] >= 0 and train_run.data.metrics["eval/num_samples"] == 32
    capsys.readouterr()

    assert cli(["evaluate", "experiments/video_nar.yaml", "--ckpt", str(ckpt), "--num-samples", "32",
                "--name", "video-eval", *overrides]) == 0
    printed = capsys.readouterr().out
    fvd = float(re.search(r"fvd=([0-9.]+)", printed).group(1))
    record = json.loads((tmp_path / "runs" / "video-eval" / "eval.json").read_text())
    assert record["metrics"]["fvd"] == pytest.approx(fvd, abs=1e-4)
    assert record["protocol"]["name"] == "fvd" and record["protocol"]["features"] == "video_domain"
    # the training run's evaluation drew the same per-sample seeds: the same clips, the same FVD
    assert record["metrics"]["fvd"] == pytest.approx(train_run.data.metrics["eval/fvd"], rel=1e-6)
    run = client.get_run(record["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["eval/fvd"] == pytest.approx(fvd, abs=1e-4)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"eval_samples.gif", "eval.json"}


def test_a_sweep_scored_against_an_adm_reference_reports_sfid(tmp_path, shapes_reference, random_inception_weights):
    """sFID is computed in every ADM-scored point and, being registered, reaches the summary table,
    the parent run's metrics and its best-variant tags."""
    out = tmp_path / "results"
    assert cli(["sweep", "experiments/ablation_heads.yaml", "--only", "ntp_raster", "--out", str(out), *SWEEP_TINY,
                f"eval.reference={shapes_reference}", f"eval.extractor_options.weights_path={random_inception_weights}",
                *tracking_overrides(tmp_path, experiment=None)]) == 0
    header = next(line for line in (out / "summary.md").read_text().splitlines() if line.startswith("| variant"))
    assert re.findall(r"\b(fid|sfid|is|precision|recall)\b", header) == ["fid", "sfid", "is", "precision", "recall"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    (parent,) = [r for r in client.search_runs([client.get_experiment_by_name("ablation_heads").experiment_id])
                 if "mlflow.parentRunId" not in r.data.tags]
    assert "sfid/ntp_raster" in parent.data.metrics and parent.data.tags["nar_bench.best.sfid"] == "ntp_raster"


def test_the_sample_grid_is_the_evaluations_first_samples_through_the_same_engine(tmp_path):
    """`nar-bench sample`'s grid (GridSampler) and an evaluation's samples come from one engine: with
    at most 16 classes the grid's sample i is the evaluation's sample i (CPU, fp32: bit-identical)."""
    import torch

    from nar_bench.evaluation.samples import engine_grid, first_samples, generate_samples, sample_settings
    from tests.test_run_evaluate import CLASSES, tiny_module

    cfg, module = tiny_module("eval.samples_per_class=2")
    grid = engine_grid(module, cfg)
    assert grid.shape[0] == 2 * CLASSES and grid.dtype == torch.uint8
    path = generate_samples(module, cfg, 4 * CLASSES, tmp_path / "samples.npz", cfg.eval.batch_size,
                            sample_settings(cfg, CLASSES))
    assert torch.equal(grid, first_samples(path, len(grid)))
    assert not torch.equal(grid[:CLASSES], grid[CLASSES:])  # the second row has its own noise, not a copy
