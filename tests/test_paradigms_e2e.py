"""Issue 4: every paradigm is chosen by name from YAML and trained + sampled by the same
GeneratorModule through `nar-bench train` / `nar-bench sample`, tiny and on the CPU."""

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from nar_bench.cli import main
from nar_bench.config import load_config
from nar_bench.lit.module import GeneratorModule
from nar_bench.registry import PARADIGMS
from tests.conftest import tracking_overrides

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 3
TINY = ["model.size=tiny", "data.image_size=16", "data.grid_size=4", "data.batch_size=8", "data.num_val=8",
        f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={STEPS}", "trainer.log_every_n_steps=1",
        "eval.samples_per_class=1"]
# A tiny msvq: 16px images -> 8x8 latent (downsample 2), scales 1,2,4,8 (85 codes, 4 steps)
MSVQ = ["tokenizer.name=msvq", "tokenizer.options.ch=8", "tokenizer.options.ch_mult=[1,2]",
        "tokenizer.options.norm_groups=4", "tokenizer.options.vocab_size=32", "tokenizer.options.z_channels=8",
        "tokenizer.options.scales=[1,2,4,8]"]
RUNS = {  # paradigm: (config, overrides, decoding steps)
    "ar": ("experiments/demo.yaml", ["model.paradigm=ar"], 16),
    "nar": ("experiments/demo.yaml", ["model.paradigm=nar"], 7),
    "par": ("experiments/demo.yaml", ["model.paradigm=par", "model.options.regions=4"], 7),
    # an untrained msvq, said so explicitly; its 8x8 latent is the grid
    "var": ("experiments/demo.yaml", ["model.paradigm=var", "model.size=d2", *MSVQ, "tokenizer.untrained=true",
                                      "data.grid_size=8"], 4),
    "nar_video": ("experiments/video_nar.yaml", ["data.frames=2"], 8),  # 2x4x4 grid: T + H + W - 2 steps
    "maskgit": ("experiments/demo.yaml", ["model.paradigm=maskgit"], 8),  # options.steps (default 8)
}



def last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_every_registered_paradigm_has_an_end_to_end_run():
    assert set(RUNS) == set(PARADIGMS)


@pytest.mark.parametrize("paradigm", RUNS)
def test_train_and_sample_through_the_cli(tmp_path, capsys, paradigm):
    config, overrides, steps = RUNS[paradigm]
    assert main(["train", config, *TINY, *overrides, *tracking_overrides(tmp_path)]) == 0
    summary = dict(item.split("=", 1) for item in last_line(capsys).split())
    assert summary["paradigm"] == paradigm and summary["steps_per_image"] == str(steps)

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["cfg/model/paradigm"] == paradigm
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(STEPS))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    grid = "samples.gif" if paradigm == "nar_video" else "samples.png"
    assert {grid, "samples", "summary.csv"} <= artifacts
    assert client.list_artifacts(run.info.run_id, "samples")  # the validation-time grid

    (ckpt,) = (tmp_path / "runs").glob("*/checkpoints/last.ckpt")
    assert main(["sample", "--ckpt", str(ckpt), "--out", str(tmp_path / "again.png")]) == 0
    assert Path(last_line(capsys)).stat().st_size > 0


@pytest.mark.parametrize("config", sorted(str(p) for p in Path("experiments").glob("*.yaml")))
def test_experiment_yamls_build_the_paradigm_they_name(config):
    cfg = load_config(config)
    points = cfg.bench.points or [cfg.model]  # the throughput sweep names its paradigms per point
    for point in points:
        assert point.paradigm in PARADIGMS
    if not cfg.bench.points:
        module = GeneratorModule(cfg, 16)
        assert module.paradigm.name == cfg.model.paradigm


def test_var_demo_two_step_flow(tmp_path, capsys):
    """experiments/var_demo.yaml as its header says: train the msvq, then VAR on its codes."""
    tiny = ["data.image_size=16", "data.grid_size=8", "data.batch_size=8", "data.num_val=8", "data.num_train=16",
            "trainer.max_steps=2", "trainer.val_check_interval=2", "eval.samples_per_class=1", *MSVQ]
    assert main(["train-tokenizer", "experiments/var_demo.yaml", *tiny, *tracking_overrides(tmp_path)]) == 0
    weights = dict(item.split("=", 1) for item in last_line(capsys).split())["tokenizer_checkpoint"]
    argv = ["train", "experiments/var_demo.yaml", *tiny, f"tokenizer.checkpoint={weights}",
            *tracking_overrides(tmp_path)]
    assert main(argv) == 0
    summary = dict(item.split("=", 1) for item in last_line(capsys).split())
    assert summary["paradigm"] == "var" and summary["steps_per_image"] == "4" and summary["train_steps"] == "2"
    (ckpt,) = (tmp_path / "runs").glob("var-*/checkpoints/last.ckpt")
    trained, used = torch.load(weights)["model"], torch.load(ckpt)["state_dict"]
    for key, value in trained.items():  # the VAR run used the trained msvq
        assert torch.equal(used[f"tokenizer.{key}"], value), key
