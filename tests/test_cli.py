
import re

import pytest
from mlflow.tracking import MlflowClient

from nar_bench.cli import main
from tests.conftest import tracking_overrides

TINY = ["model.size=tiny", "data.image_size=16", "data.grid_size=4", "data.batch_size=8", "data.num_val=16",
        "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.log_every_n_steps=1",
        "eval.samples_per_class=1"]



def test_train_logs_loss_curve_params_and_sample_grid_to_mlflow(tmp_path, capsys):
    assert main(["train", "experiments/demo.yaml", *TINY, *tracking_overrides(tmp_path)]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) >= 3  # a curve, not a point
    assert "val/loss" in run.data.metrics
    assert run.data.params["cfg/model/paradigm"] == "nar"  # demo.yaml trains NAR
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"samples.png", "summary.csv", "summary.md", "samples"} <= artifacts
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "samples.png").stat().st_size > 0 and (run_dir / "checkpoints" / "last.ckpt").is_file()
    # the final grid (16 grid columns x 1 row, 4 x 4 grid: NAR's 7 steps) says what it does before and after
    err = capsys.readouterr().err
    assert "final sample grid: 16 images x 7 decoding steps ..." in err
    assert re.search(r"final sample grid: 16 images x 7 decoding steps in \d+s", err)

    out = tmp_path / "again.png"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert main(["sample", "--ckpt", str(ckpt), "--out", str(out), "eval.sampling.cfg_scale=1.0"]) == 0
    assert out.stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["train", "experiments/demo.yaml", "trainer.max_stepz=3"], "max_stepz"),
    (["train", "experiments/demo.yaml", "model.checkpoint=/nope.pt"], "model.checkpoint: file '/nope.pt' not found"),
    (["sample", "--ckpt", "/nope.ckpt"], "checkpoint '/nope.ckpt' not found"),
])
def test_bad_input_is_one_clear_error_and_leaves_nothing_behind(tmp_path, capsys, argv, message):
    assert main([*argv, *tracking_overrides(tmp_path)] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns.db").exists()
