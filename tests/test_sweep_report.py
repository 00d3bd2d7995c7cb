"""Ablation / CFG sweep configs, `nar-bench sweep` (parent + child MLflow runs) and `nar-bench report`.

The tiny sweeps train for a few steps on 16px images with a 4x4 token grid and evaluate 32 samples
against a domain classifier trained for a few steps into a tmp cache.
"""

import ast
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from nar_bench.cli import main
from nar_bench.config import expand_sweep, load_config
from nar_bench.run.sweep import training_key
from nar_bench.tracking.names import PARENT_TAG, TRAINED_IN_TAG
from nar_bench.tracking.provenance import device_description, git_commit
from tests.conftest import tracking_overrides

TINY = ["data.image_size=16", "data.grid_size=4", "data.batch_size=8", "data.num_val=16", "trainer.max_steps=4",
        "trainer.val_check_interval=4", "trainer.log_every_n_steps=1", "eval.num_samples=32", "eval.batch_size=16",
        "eval.reference_size=64", "eval.samples_per_class=1", "eval.extractor_options.steps=20",
        "eval.extractor_options.width=8"]
PAPER_VARIANTS = {  # name -> (paradigm, options)
    "ntp_raster": ("ar", {}),
    "nar_single_head": ("nar", {"heads": "single", "overlap_head": "mixed"}),
    "nar_dim_heads_mixed": ("nar", {"heads": "dimension", "overlap_head": "mixed"}),
    "nar_dim_heads_horizontal": ("nar", {"heads": "dimension", "overlap_head": "horizontal"}),
    "nar_dim_heads_vertical": ("nar", {"heads": "dimension", "overlap_head": "vertical"}),
}


pytestmark = pytest.mark.usefixtures("metrics_cache")



def experiment_runs(tmp_path: Path, experiment: str) -> list:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


@pytest.mark.parametrize("path", ["experiments/ablation_heads.yaml", "experiments/ablation_heads_gpu.yaml"])
def test_ablation_config_expands_to_one_run_per_paper_variant_with_equal_budget(path):
    runs = expand_sweep(load_config(path, ["sweep.seeds=[0,1]"]))
    assert [name for name, _ in runs] == [f"{v}/seed={s}" for v in PAPER_VARIANTS for s in (0, 1)]
    for name, cfg in runs:
        paradigm, options = PAPER_VARIANTS[name.split("/")[0]]
        assert cfg.model.paradigm == paradigm and dict(cfg.model.options) == options
        assert cfg.seed == int(name[-1])
    budgets = {(cfg.trainer.max_steps, cfg.data.batch_size, cfg.model.size, cfg.model.dim) for _, cfg in runs}
    assert len(budgets) == 1
    assert len({training_key(cfg) for _, cfg in runs}) == 10  # every run trains


def test_cfg_sweep_trains_each_paradigm_once_and_evaluates_it_at_every_scale():
    runs = expand_sweep(load_config("experiments/cfg_sweep.yaml"))
    scales = [1.0, 1.5, 2.0, 3.0]
    assert [name for name, _ in runs] == [f"{p}/cfg_scale={s}" for p in ("ar", "par", "nar") for s in scales]
    keys = {}
    for name, cfg in runs:
        keys.setdefault(cfg.model.paradigm, set()).add(training_key(cfg))
        assert cfg.eval.sampling.cfg_scale == float(name.split("=")[-1])
    assert all(len(k) == 1 for k in keys.values()) and len(set.union(*keys.values())) == 3


def test_tiny_ablation_sweep_logs_parent_and_child_runs_and_report_rebuilds_its_table(tmp_path):
    out = tmp_path / "results"
    argv = ["sweep", "experiments/ablation_heads.yaml", "--only", "ntp_raster,nar_dim_heads_mixed", "--out", str(out),
            *TINY, *tracking_overrides(tmp_path, experiment=None)]
    assert main(argv) == 0

    runs = experiment_runs(tmp_path, "ablation_heads")
    (parent,) = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    assert parent.info.run_name == "ablation_heads" and parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == ["nar_dim_heads_mixed", "ntp_raster"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    for child in children:
        assert child.data.tags[PARENT_TAG] == parent.info.run_id and child.info.status == "FINISHED"
        assert child.data.tags["nar_bench.variant"] == child.info.run_name
        assert {"eval/fid", "eval/is", "eval/precision", "eval/recall", "eval/kid", "eval/class_accuracy",
                "val/loss"} <= set(child.data.metrics)
        # the MLflow view: params are what the points differ in, the whole config is one artifact
        varied = {"ntp_raster": {"cfg/model/paradigm"},  # a raster model has no NAR options
                  "nar_dim_heads_mixed": {"cfg/model/paradigm", "cfg/model/options/heads",
                                          "cfg/model/options/overlap_head"}}
        assert set(child.data.params) == varied[child.info.run_name], sorted(child.data.params)
        config = yaml.safe_load(Path(client.download_artifacts(child.info.run_id, "config.yaml", str(tmp_path)))
                                .read_text())
        assert config["trainer"]["max_steps"] == 4 and config["model"]["paradigm"] == child.data.tags[
            "nar_bench.paradigm"] == child.data.params["cfg/model/paradigm"]
    # the parent carries the comparison: a metric per variant and the best variant per metric
    assert {"fid/ntp_raster", "fid/nar_dim_heads_mixed", "class_accuracy/ntp_raster"} <= set(parent.data.metrics)
    assert parent.data.tags["nar_bench.best.fid"] in ("ntp_raster", "nar_dim_heads_mixed")

    table = pd.read_csv(out / "runs.csv")
    assert table["variant"].tolist() == ["ntp_raster", "nar_dim_heads_mixed"]
    assert table["paradigm"].tolist() == ["ar", "nar"] and (table["train_steps"] == 4).all()
    summary = pd.read_csv(out / "summary.csv")
    assert summary["variant"].tolist() == table["variant"].tolist() and (summary["seeds"] == 1).all()
    assert summary["fid_mean"].tolist() == pytest.approx(table["fid"].tolist())
    info = json.loads((out / "provenance.json").read_text())
    assert info["command"].startswith("nar-bench sweep experiments/ablation_heads.yaml --only")
    assert {"device", "torch", "commit"} <= set(info) and info["commit"] == git_commit()
    assert f"commit: `{git_commit()}`" in (out / "summary.md").read_text() and (out / "metrics.png").stat().st_size > 0

    # a child killed mid-run (say, by a command's time limit) stays RUNNING in MLflow: listed, not averaged
    killed = client.create_run(parent.info.experiment_id, run_name="ntp_raster",
                               tags={PARENT_TAG: parent.info.run_id, "nar_bench.variant": "ntp_raster"})
    client.log_metric(killed.info.run_id, "eval/fid", 999.0)

    report_out = tmp_path / "report"
    assert main(["report", "experiments/ablation_heads.yaml", "--parent", "latest", "--out", str(report_out),
                 *tracking_overrides(tmp_path, experiment=None)]) == 0
    fetched = pd.read_csv(report_out / "runs.csv")
    assert fetched.set_index("mlflow_run_id").loc[killed.info.run_id, "status"] == "RUNNING"
    fetched = fetched[fetched["status"] == "FINISHED"].set_index("point")
    assert (fetched["commit"] == git_commit()).all() and (fetched["device"] == device_description()).all()
    report_info = json.loads((report_out / "provenance.json").read_text())
    assert report_info["runs_commit"] == git_commit() and report_info["runs_device"] == device_description()
    for _, row in table.iterrows():
        assert fetched.loc[row["point"], "fid"] == pytest.approx(row["fid"])
        assert fetched.loc[row["point"], "class_accuracy"] == pytest.approx(row["class_accuracy"])
    fetched_summary = pd.read_csv(report_out / "summary.csv")
    assert fetched_summary["variant"].tolist() == table["variant"].tolist() and (fetched_summary["seeds"] == 1).all()
    assert fetched_summary["fid_mean"].tolist() == pytest.approx(table["fid"].tolist())
    assert (report_out / "metrics.png").stat().st_size > 0
    assert main(["report", "experiments/ablation_heads.yaml", *tracking_overrides(tmp_path, experiment="nope")]) == 2


def test_commit_named_by_env_wins_over_the_checkout_git_metadata(monkeypatch):
    # a tree copied to a GPU machine can carry a stale .git; the commit named explicitly is the truth
    monkeypatch.delenv("NAR_BENCH_COMMIT", raising=False)
    from_git = git_commit()
    assert from_git != "unknown" and len(from_git.removesuffix("-dirty")) == 40
    monkeypatch.setenv("NAR_BENCH_COMMIT", "0123abc")
    assert git_commit() == "0123abc"


def test_cfg_sweep_points_of_one_paradigm_share_one_training(tmp_path):
    out = tmp_path / "results"
    assert main(["sweep", "experiments/cfg_sweep.yaml", "--only", "nar", "--out", str(out), *TINY,
                 *tracking_overrides(tmp_path, experiment=None),
                 "sweep.grid={eval.sampling.cfg_scale: [1.0, 3.0]}"]) == 0
    children = {r.info.run_name: r for r in experiment_runs(tmp_path, "cfg_sweep") if PARENT_TAG in r.data.tags}
    trained, reused = children["nar/cfg_scale=1.0"], children["nar/cfg_scale=3.0"]
    assert reused.data.tags["nar_bench.trained_in_run"] == trained.info.run_id
    assert "val/loss" in trained.data.metrics and "val/loss" not in reused.data.metrics
    assert reused.data.params["cfg/eval/sampling/cfg_scale"] == "3.0" and reused.info.status == "FINISHED"
    assert len(list((tmp_path / "runs").iterdir())) == 1  # one training run directory
    summary = pd.read_csv(out / "summary.csv")
    assert summary["cfg_scale"].tolist() == [1.0, 3.0] and (out / "metrics.png").stat().st_size > 0
    # every evaluation recorded its speed: the parent gets quality against throughput and its Pareto plot
    assert reused.data.metrics["eval/generate_img_s"] > 0 and reused.data.metrics["eval/wall_s"] > 0
    speed = pd.read_csv(out / "quality_vs_speed.csv")
    assert speed["cfg_scale"].tolist() == [1.0, 3.0] and (speed["generate_img_s"] > 0).all() and speed["pareto"].any()
    assert (out / "quality_vs_speed.png").stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["sweep", "experiments/ablation_heads.yaml", "--only", "nar_typo"], "no sweep variant named nar_typo"),
    (["report", "experiments/ablation_heads.yaml"], "no MLflow store at"),
])
def test_bad_sweep_or_report_input_is_one_clear_error(tmp_path, capsys, argv, message):
    assert main([*argv, *tracking_overrides(tmp_path, experiment=None)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_compare_runs_notebook_is_valid_and_calls_the_report_functions():
    notebook = json.loads(Path("notebooks/compare_runs.ipynb").read_text())
    assert notebook["nbformat"] == 4 and notebook["cells"]
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    source = "\n".join("".join(cell["source"]) for cell in code)
    for cell in code:
        ast.parse("".join(cell["source"]))
    assert all(f"report.{fn}(" in source for fn in ("fetch_runs", "summarize", "plot_summary"))


ORDER_TINY = ["model.size=tiny", "model.dim=null", "model.n_layers=1", "model.n_heads=null", "data.image_size=32",
              "data.grid_size=8", "data.num_workers=0", "trainer.precision=auto", "trainer.accelerator=cpu",
              "sweep.seeds=[0]", "sweep.grid={model.options.steps: [64, 16]}", *TINY[2:]]
ORDERS = ("raster", "diagonal", "random", "halton", "locality")


def test_ablation_order_config_trains_each_model_once_per_seed():
    runs = expand_sweep(load_config("experiments/ablation_order.yaml"))
    randar = [name for name, cfg in runs if cfg.model.paradigm == "randar"]
    assert randar == [f"randar_{o}/steps={s}/seed={seed}" for o in ORDERS for s in (256, 88, 32) for seed in (0, 1)]
    assert [name for name, cfg in runs if cfg.model.paradigm == "ar"] == [
        f"ar_{v}/seed={seed}" for v in ("raster", "zipar8", "zipar4") for seed in (0, 1)]
    keys = {(cfg.model.paradigm, cfg.seed): set() for _, cfg in runs}
    for _, cfg in runs:
        keys[cfg.model.paradigm, cfg.seed].add(training_key(cfg))
    assert all(len(k) == 1 for k in keys.values()) and len(set.union(*keys.values())) == 4


def test_tiny_ablation_order_sweep_trains_one_model_per_group_and_evaluates_every_order_and_step_count(tmp_path):
    """experiments/ablation_order.yaml at tiny size (8x8 tokens, so ZipAR's windows 8 and 4 fit a row):
    one RandAR training and one AR training; a row per order x steps point and per AR decoding."""
    out = tmp_path / "results"
    argv = ["sweep", "experiments/ablation_order.yaml", "--out", str(out), *ORDER_TINY,
            *tracking_overrides(tmp_path, experiment=None)]
    assert main(argv) == 0

    children = [r for r in experiment_runs(tmp_path, "ablation_order") if PARENT_TAG in r.data.tags]
    trainings = {r.info.run_id: r for r in children if TRAINED_IN_TAG not in r.data.tags}
    assert sorted(r.data.tags["nar_bench.variant"] for r in trainings.values()) == ["ar_raster", "randar_raster"]
    for child in children:  # every other point evaluates the weights its paradigm's one training made
        trained_in = trainings[child.data.tags.get(TRAINED_IN_TAG, child.info.run_id)]
        assert trained_in.data.tags["nar_bench.variant"].split("_")[0] == child.data.tags["nar_bench.variant"].split(
            "_")[0]
        assert {"eval/fid", "eval/is", "eval/precision", "eval/recall", "eval/generate_img_s"} <= set(
            child.data.metrics)

    table = pd.read_csv(out / "runs.csv")
    randar = table[table["paradigm"] == "randar"]
    assert sorted(zip(randar["variant"], randar["steps"], strict=True)) == sorted(
        (f"randar_{o}", s) for o in ORDERS for s in (64, 16))
    assert (randar["steps_per_image"] == randar["steps"]).all()
    ar = table[table["paradigm"] == "ar"].set_index("variant")
    assert ar["steps_per_image"].to_dict() == {"ar_raster": 64, "ar_zipar8": 64, "ar_zipar4": 40}  # 2W + (H-2) window
    assert len(table) == 13 and table["trained_in_run"].nunique() == 2
    assert (out / "quality_vs_steps.png").is_file() and (out / "quality_vs_speed.png").is_file()
