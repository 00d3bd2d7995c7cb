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
TINY = ["data.batch_size=8", "data.num_val=8", f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={STEPS}",
        "trainer.log_every_n_steps=1", "eval.samples_per_class=1"]  # on top of each paradigm's tiny_dotlist()
# A tiny msvq: 16px images -> 8x8 latent (downsample 2), scales 1,2,4,8 (85 codes, 4 steps)
MSVQ = ["tokenizer.name=msvq", "tokenizer.options.ch=8", "tokenizer.options.ch_mult=[1,2]",
        "tokenizer.options.norm_groups=4", "tokenizer.options.vocab_size=32", "tokenizer.options.z_channels=8",
        "tokenizer.options.scales=[1,2,4,8]"]


def last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


@pytest.mark.parametrize("paradigm", sorted(PARADIGMS))
def test_train_and_sample_through_the_cli(tmp_path, capsys, paradigm):
    """demo.yaml with the paradigm's test kit (its tiny config): the steps the run reports are the
    kit model's (each paradigm's own tests pin that number)."""
    cls = PARADIGMS[paradigm]
    assert main(["train", "experiments/demo.yaml", *cls.tiny_dotlist(), *TINY, *tracking_overrides(tmp_path)]) == 0
    summary = dict(item.split("=", 1) for item in last_line(capsys).split())
    assert summary["paradigm"] == paradigm and summary["steps_per_image"] == str(cls.tiny()[0].num_steps)

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["cfg/model/paradigm"] == paradigm
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(STEPS))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    grid = "samples.gif" if cls.video else "samples.png"
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
