"""Issue 18: report statistics a reviewer can trust (distinct seeds, FINISHED runs only, duplicates
collapsed and listed, one sweep per report) and results never overwritten by accident.

The MLflow store is built by hand (no training): runs with the tags and metrics a sweep logs."""

import json
import math
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from nar_bench.cli import main
from nar_bench.tracking.provenance import git_commit, guard_output
from nar_bench.tracking.report import summarize, summary_use, write_report
from tests.conftest import tracking_overrides

EXPERIMENT = "acceptance"
T0 = 1_700_000_000_000  # ms; runs are started a minute apart, in the order created


class Store:
    """A sqlite MLflow store under tmp_path with helpers to add sweep parents and children."""

    def __init__(self, tmp_path: Path):
        self.client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
        self.exp = self.client.create_experiment(EXPERIMENT, artifact_location=str(tmp_path / "art"))
        self.clock = 0

    def _run(self, name: str, tags: dict[str, str]):
        self.clock += 1
        return self.client.create_run(self.exp, run_name=name, start_time=T0 + 60_000 * self.clock, tags=tags)

    def parent(self, name: str = "sweep") -> str:
        run = self._run(name, {})
        self.client.log_param(run.info.run_id, "points", "4")
        return run.info.run_id

    def child(self, parent: str, variant: str, seed: int, fid: float, status: str = "FINISHED",
              key: str | None = None) -> str:
        tags = {"mlflow.parentRunId": parent, "nar_bench.variant": variant, "nar_bench.seed": str(seed),
                "nar_bench.point_key": key or f"{variant}-{seed}"}
        run = self._run(f"{variant}/seed={seed}", tags)
        self.client.log_metric(run.info.run_id, "eval/fid", fid)
        self.client.log_metric(run.info.run_id, "eval/num_samples", 256)
        self.client.log_param(run.info.run_id, "cfg/eval/extractor", "domain")
        if status != "RUNNING":
            self.client.set_terminated(run.info.run_id, status=status)
        return run.info.run_id

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)


@pytest.fixture
def store(tmp_path) -> tuple[Store, dict[str, str]]:
    """A FINISHED sweep of 2 variants x 2 seeds with a rerun of one point (same seed) and a RUNNING
    child, then a FAILED sweep started later; returns the store and the run ids that matter."""
    s = Store(tmp_path)
    ids = {"sweep": s.parent()}
    ids["a0_first"] = s.child(ids["sweep"], "a", 0, fid=10.0)
    s.child(ids["sweep"], "a", 1, fid=14.0)
    s.child(ids["sweep"], "b", 0, fid=20.0)
    s.child(ids["sweep"], "b", 1, fid=24.0)
    ids["a0_rerun"] = s.child(ids["sweep"], "a", 0, fid=12.0)  # the same point again: the latest counts
    ids["running"] = s.child(ids["sweep"], "b", 0, fid=999.0, status="RUNNING")
    s.end(ids["sweep"])
    ids["failed_sweep"] = s.parent()
    s.child(ids["failed_sweep"], "a", 0, fid=500.0)
    s.child(ids["failed_sweep"], "b", 0, fid=600.0, status="FAILED")
    s.end(ids["failed_sweep"], "FAILED")
    return s, ids


def check_summary(summary: pd.DataFrame) -> None:
    rows = summary.set_index("variant")
    assert rows["seeds"].to_dict() == {"a": 2, "b": 2} and rows["seed_list"].to_dict() == {"a": "0,1", "b": "0,1"}
    assert rows["fid_mean"].to_dict() == pytest.approx({"a": 13.0, "b": 22.0})  # a: rerun 12 and 14, not 10
    assert rows["fid_std"].to_dict() == pytest.approx({"a": math.sqrt(2), "b": math.sqrt(8)})


def test_report_counts_distinct_seeds_of_finished_runs_and_lists_the_duplicate(store, tmp_path, capsys):
    _, ids = store
    out = tmp_path / "report"
    assert main(["report", "experiments/demo.yaml", "--out", str(out),
                 *tracking_overrides(tmp_path, experiment=EXPERIMENT)]) == 0
    printed = capsys.readouterr().out
    assert f"--parent latest skipped sweep run {ids['failed_sweep']} (FAILED" in printed

    check_summary(pd.read_csv(out / "summary.csv"))
    runs = pd.read_csv(out / "runs.csv").set_index("mlflow_run_id")
    assert ids["failed_sweep"] not in set(runs["parent_run"])  # one sweep, not every sweep of the experiment
    assert runs.loc[ids["a0_first"], "summary_use"] == f"duplicate of {ids['a0_rerun']}"
    assert runs.loc[ids["running"], "summary_use"] == "left out: RUNNING"
    assert (runs["summary_use"] == "used").sum() == 4
    info = json.loads((out / "provenance.json").read_text())
    assert info["parent_run"] == ids["sweep"] and info["commit"] == git_commit()
    assert "skipped sweep run" in info["selection_notes"] and "256 generated samples" in info["evaluation"]
    assert "not Inception" in info["evaluation"]
    md = (out / "summary.md").read_text()
    assert "13 ± 1.4" in md and "1 duplicate" in md and "1 RUNNING" in md

    # the failed sweep, named: its FINISHED child alone, one seed: no ±, n=1
    named = tmp_path / "named"
    assert main(["report", "experiments/demo.yaml", "--parent", ids["failed_sweep"][:8], "--out", str(named),
                 *tracking_overrides(tmp_path, experiment=EXPERIMENT)]) == 0
    assert f"sweep run {ids['failed_sweep']} is FAILED" in capsys.readouterr().out
    summary = pd.read_csv(named / "summary.csv")
    assert summary["variant"].tolist() == ["a"] and summary["seeds"].tolist() == [1]
    assert "500 (n=1)" in (named / "summary.md").read_text() and "±" not in (named / "summary.md").read_text()

    # every sweep only when asked: the failed sweep's finished run is a second run of (a, seed 0)
    every = tmp_path / "all"
    assert main(["report", "experiments/demo.yaml", "--parent", "all", "--out", str(every),
                 *tracking_overrides(tmp_path, experiment=EXPERIMENT)]) == 0
    rows = pd.read_csv(every / "summary.csv").set_index("variant")
    assert rows["seeds"].to_dict() == {"a": 2, "b": 2}  # still distinct seeds


def test_notebook_code_path_gives_the_same_summary(store, tmp_path, monkeypatch):
    notebook = json.loads(Path("notebooks/compare_runs.ipynb").read_text())
    cells = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    display = types.ModuleType("IPython.display")
    display.Image = lambda filename: filename
    monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
    monkeypatch.setitem(sys.modules, "IPython.display", display)
    monkeypatch.chdir(Path.cwd())  # the notebook changes directory only when run from notebooks/
    namespace: dict = {}
    exec(cells[0], namespace)
    namespace["CONFIG"] = "experiments/demo.yaml"
    namespace["OVERRIDES"] = tracking_overrides(tmp_path, experiment=EXPERIMENT)
    for cell in cells[1:]:
        exec(cell.replace('Path("results/runs/report")', repr(str(tmp_path / "nb")).join(("Path(", ")"))),
             namespace)
    check_summary(namespace["summary"])
    assert (namespace["runs"]["summary_use"] == "used").sum() == 4
    assert Path(namespace["plot"]).stat().st_size > 0


def test_sweep_rows_without_status_are_deduplicated_too():
    table = pd.DataFrame({"variant": ["a", "a", "a"], "seed": [0, 0, 1], "fid": [1.0, 3.0, 5.0],
                          "mlflow_run_id": ["r1", "r2", "r3"]})
    assert summary_use(table, []).tolist() == ["duplicate of r2", "used", "used"]
    summary = summarize(table, ["variant"])
    assert summary["seeds"].tolist() == [2] and summary["fid_mean"].tolist() == [4.0]


def test_one_seed_plot_has_no_error_caps_and_states_n(tmp_path):
    table = pd.DataFrame({"variant": ["a", "b", "b"], "seed": [0, 0, 1], "fid": [1.0, 2.0, 4.0],
                          "num_samples": [256] * 3, "mlflow_run_id": ["r1", "r2", "r3"]})
    paths = write_report(table, [], tmp_path, {"command": "test", "commit": "abc", "device": "cpu"})
    from PIL import Image

    caption = Image.open(paths["plot"]).text["Description"]
    assert "commit: abc" in caption and "256 generated samples per run" in caption and "seeds: 0, 1" in caption
    md = paths["summary_md"].read_text()
    assert "1 (n=1)" in md and "3 ± 1.4" in md
    assert "speed_csv" not in paths and not (tmp_path / "quality_vs_speed.png").exists()  # no speed records


def test_runs_with_speed_records_get_a_quality_vs_throughput_table_and_a_pareto_plot(tmp_path):
    """Speed is averaged per group like quality, never as a metric; the front holds the groups no
    other group beats on both FID and generate img/s."""
    table = pd.DataFrame({"variant": ["nar", "nar", "ar", "par", "slow_bad"], "seed": [0, 1, 0, 0, 0],
                          "cfg_scale": [2.0] * 5, "fid": [3.0, 5.0, 2.0, 4.5, 6.0],
                          "generate_img_s": [900.0, 1100.0, 300.0, 800.0, 200.0], "latency_s": [0.3] * 5,
                          "mlflow_run_id": ["r1", "r2", "r3", "r4", "r5"]})
    paths = write_report(table, ["cfg_scale"], tmp_path, {"command": "test"})
    speed = pd.read_csv(paths["speed_csv"]).set_index("variant")
    assert speed.loc["nar", ["seeds", "fid", "generate_img_s"]].tolist() == [2, 4.0, 1000.0]
    assert speed["pareto"].to_dict() == {"nar": True, "ar": True, "par": False, "slow_bad": False}
    assert speed.loc["nar", "label"] == "nar/cfg_scale_2.0" and "latency_s" in speed
    assert "fid_mean" not in speed and "generate_img_s_mean" not in pd.read_csv(paths["summary_csv"])
    from PIL import Image

    assert Image.open(paths["pareto"]).size[0] > 0 and paths["speed_md"].read_text().count("\n") == 6



def test_a_variant_that_crosses_no_grid_is_labelled_by_its_name_alone():
    from nar_bench.tracking.parent_summary import group_label

    rows = pd.DataFrame({"variant": ["randar", "ar_zipar8"], "steps": pd.Series([88, None], dtype=object)})
    assert [group_label(row, ["variant", "steps"]) for _, row in rows.iterrows()] == ["randar/steps_88", "ar_zipar8"]

# --- committed results are never overwritten by accident ------------------------------------------
def committed_folder(tmp_path: Path) -> Path:
    """A results folder from another commit: a provenance.json naming it, and a result file."""
    folder = tmp_path / "published"
    folder.mkdir()
    (folder / "provenance.json").write_text(json.dumps({"commit": "0" * 40}))
    (folder / "metrics.png").write_bytes(b"published")
    return folder


def test_guard_allows_new_folders_and_this_commits_results(tmp_path):
    assert guard_output(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "provenance.json").write_text(json.dumps({"commit": git_commit()}))
    guard_output(tmp_path / "mine")
    guard_output(committed_folder(tmp_path), overwrite=True)


def test_guard_refuses_files_committed_to_git():
    with pytest.raises(Exception, match="committed to git"):
        guard_output("results/order")
    with pytest.raises(Exception, match="committed to git"):
        guard_output("results/order/order_nar.gif")


@pytest.mark.parametrize("verb", ["sweep", "report", "bench", "order-gifs", "sample", "reference"])
def test_every_verb_refuses_a_folder_of_committed_results_before_any_work(tmp_path, capsys, verb):
    folder = committed_folder(tmp_path)
    argv = {
        "sweep": ["sweep", "experiments/ablation_heads.yaml", "--out", str(folder)],
        "report": ["report", "experiments/ablation_heads.yaml", "--out", str(folder)],
        "bench": ["bench", "experiments/throughput_sweep.yaml", "--out", str(folder)],
        "order-gifs": ["order-gifs", "--out", str(folder)],
        "sample": ["sample", "--ckpt", str(tmp_path / "none.ckpt"), "--out", str(folder / "metrics.png")],
        "reference": ["reference", str(tmp_path), "--out", str(folder / "ref.npz")],
    }[verb]
    assert main([*argv, *tracking_overrides(tmp_path, experiment=None)]
                if verb in ("sweep", "report", "bench") else argv) == 2
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.png", "provenance.json"]
    assert (folder / "metrics.png").read_bytes() == b"published"
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "runs").exists()


def test_bench_as_the_readme_shows_it_runs_eager_on_a_cpu(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("the fallback is for machines without a GPU")
    out = tmp_path / "bench"
    argv = ["bench", "experiments/throughput_sweep.yaml", "--out", str(out), "bench.dtype=fp32",
            "bench.points=[{paradigm: nar, size: tiny}]", "bench.batch_sizes=[1]", "bench.vocab_size=64",
            "bench.num_classes=10", "bench.repeats=1", "bench.warmup=0", "bench.profile_batch=0",
            "data.image_size=16", "data.grid_size=4", *tracking_overrides(tmp_path, experiment="bench")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "note: bench.cuda_graph needs a CUDA device; timing eager generation on cpu" in err
    points = pd.read_csv(out / "points.csv")
    assert points["cuda_graph"].tolist() == [False] and points["status"].tolist() == ["ok"]
    assert "eager" in (out / "throughput.md").read_text()
    assert json.loads((out / "provenance.json").read_text())["commit"] == git_commit()


def test_a_plot_of_many_metrics_wraps_into_rows_readable_where_mlflow_shows_it(tmp_path):
    """Panels wrap at PLOT_COLUMNS a row, so the PNG stays about 1200 px wide (MLflow's artifact view
    and a README scale a wider one down until its text cannot be read)."""
    from PIL import Image

    from nar_bench.metrics.registry import plotted
    from nar_bench.tracking.report import PLOT_COLUMNS

    metrics = [spec.name for spec in plotted()]
    assert len(metrics) > PLOT_COLUMNS  # the case that used to give one row of every panel
    table = pd.DataFrame({"variant": ["a", "b"], "seed": [0, 0], "mlflow_run_id": ["r1", "r2"],
                          **{name: [0.5, 0.25] for name in metrics}})
    plot = write_report(table, [], tmp_path, {"command": "test", "commit": "abc", "device": "cpu"})["plot"]
    width, height = Image.open(plot).size
    assert width <= 1250 and height > 2 * 360  # 100 dpi, several rows of 3.6 in panels
