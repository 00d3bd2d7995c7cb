"""Multi-process (DDP) training, evaluation and sweeps on CPU: 2 gloo processes started by
Lightning's own launcher (it re-executes the command, so every run is a subprocess), as on a
2-GPU machine with NCCL (issue 14; results/multigpu/README.md lists the GPU runs still to do).

Training equivalence: 2 processes x batch B/2 vs 1 process x batch B, both under strategy=ddp
(Lightning's DistributedSampler, seeded with the run seed, so global step k of either run sees the
same B samples), dropouts off: the two runs must give the same loss at every step and the same
weights, up to float summation order. A plain one-device run (strategy=auto) shuffles with its
own sampler, so it sees other batches: equal in expectation, not step by step.
"""

import json
import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from nar_bench.config import merge
from nar_bench.evaluation import evaluate
from nar_bench.lit.module import GeneratorModule
from nar_bench.lit.shard_sampling import class_balanced_labels
from nar_bench.metrics.cache import CACHE_ENV
from nar_bench.tracking.names import PARENT_TAG
from tests.conftest import run_python, tracking_overrides

pytestmark = [pytest.mark.ddp, pytest.mark.usefixtures("metrics_cache")]

ROOT = Path(__file__).resolve().parents[1]
GLOBAL_BATCH, STEPS = 8, 6
TRAIN = ["model.size=tiny", "data.image_size=16", "data.grid_size=4", "data.num_val=16", f"trainer.max_steps={STEPS}",
         "trainer.val_check_interval=3", "trainer.log_every_n_steps=1", "eval.samples_per_class=1",
         "trainer.accelerator=cpu", "trainer.strategy=ddp",
         # no random masks: the 2-process and the 1-process run then compute the same losses
         "model.token_dropout=0", "model.resid_dropout=0", "model.ffn_dropout=0", "model.class_dropout=0"]
EVAL = ["eval.num_samples=32", "eval.batch_size=8", "eval.reference_size=64", "eval.extractor_options.steps=20",
        "eval.extractor_options.width=8",
        # greedy decoding: a sample depends only on its label, so 1 and 2 processes draw the same images
        "eval.sampling.temperature=0.0"]
LAUNCHER_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
TOLERANCE = 1e-5  # float32 summation order (gradients all-reduced over 2 ranks vs summed in one batch)


def run(args: list[str]) -> str:
    """Runs ``python <args>`` from the repository root (this checkout first on the path, the
    test session's metrics cache) under the hang guard; asserts it succeeded and returns its stdout."""
    env = {key: value for key, value in os.environ.items() if key not in LAUNCHER_ENV}
    env.update(PYTHONPATH=str(ROOT), **{CACHE_ENV: os.environ[CACHE_ENV]})
    done = run_python(args, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def runs_by_name(tmp: Path, experiment: str) -> dict[str, list]:
    client = MlflowClient(f"sqlite:///{tmp}/mlruns.db")
    runs: dict[str, list] = {}
    for r in client.search_runs([client.get_experiment_by_name(experiment).experiment_id]):
        runs.setdefault(r.info.run_name, []).append(r)
    return runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Callable[[str], Path]:
    """paradigm -> folder holding its runs ``two`` (2 processes, batch 4 each) and ``one`` (1
    process, batch 8) in MLflow experiment ``train`` and under <folder>/<name>/; trained once."""
    folders: dict[str, Path] = {}

    def train(paradigm: str) -> Path:
        if paradigm not in folders:
            tmp = tmp_path_factory.mktemp(f"train-{paradigm}")
            for name, devices in (("two", 2), ("one", 1)):
                run(["-m", "nar_bench.cli", "train", "experiments/demo.yaml", *TRAIN, f"model.paradigm={paradigm}",
                     f"trainer.devices={devices}", f"data.batch_size={GLOBAL_BATCH // devices}",
                     f"tracking.run_name={name}", *tracking_overrides(tmp, "train"), f"output_dir={tmp}/{name}"])
            folders[paradigm] = tmp
        return folders[paradigm]

    return train


def checkpoint(tmp: Path, name: str) -> Path:
    (run_dir,) = (tmp / name).iterdir()  # one run folder: rank 1 writes none
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("paradigm", ["nar", "ar"])
def test_ddp_training_logs_one_run_writes_one_checkpoint_and_matches_one_process_at_the_global_batch(
        trained, paradigm):
    tmp = trained(paradigm)
    runs = runs_by_name(tmp, "train")
    assert sorted(runs) == ["one", "two"] and len(runs["two"]) == 1  # rank 1 opened no run of its own
    (two,), (one,) = runs["two"], runs["one"]
    assert two.info.status == "FINISHED" and two.data.params["cfg/trainer/devices"] == "2"

    (run_dir,) = (tmp / "two").iterdir()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    assert {"samples.png", "summary.csv"} <= {p.name for p in run_dir.iterdir()}
    client = MlflowClient(f"sqlite:///{tmp}/mlruns.db")
    artifacts = {r.info.run_name: sorted(a.path for a in client.list_artifacts(r.info.run_id, "samples"))
                 for r in (one, two)}
    assert len(artifacts["two"]) == 2 and artifacts["two"] == artifacts["one"]  # one grid per validation

    curves = {r.info.run_name: sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, "train/loss"))
              for r in (one, two)}
    assert [step for step, _ in curves["two"]] == list(range(STEPS))  # one point per step, not one per rank
    assert [step for step, _ in curves["one"]] == list(range(STEPS))
    assert [loss for _, loss in curves["two"]] == pytest.approx([loss for _, loss in curves["one"]], abs=TOLERANCE)
    assert two.data.metrics["val/loss"] == pytest.approx(one.data.metrics["val/loss"], abs=TOLERANCE)

    weights = {name: torch.load(checkpoint(tmp, name), map_location="cpu", weights_only=False)
               for name in ("one", "two")}
    assert weights["two"]["global_step"] == weights["one"]["global_step"] == STEPS
    for key, value in weights["one"]["state_dict"].items():
        assert torch.allclose(weights["two"]["state_dict"][key], value, atol=TOLERANCE), key


EVAL_SCRIPT = """
import json, sys
import nar_bench
from omegaconf import OmegaConf
from nar_bench.config import merge
from nar_bench.lit.module import GeneratorModule
from nar_bench.evaluation import evaluate
from nar_bench.tracking.mlflow import make_logger

ckpt, out = sys.argv[1], sys.argv[2]
module = GeneratorModule.load_from_checkpoint(ckpt, map_location="cpu")
cfg = merge(module.cfg, OmegaConf.from_dotlist(sys.argv[3:]))
for scale in {scales!r}:  # two evaluations of one model: two MLflow runs
    point = merge(cfg, OmegaConf.from_dotlist([f"eval.sampling.cfg_scale={{scale}}"]))
    logger = make_logger(point.tracking, f"eval-cfg{{scale}}")
    metrics = evaluate(module, point, logger=logger, out_dir=f"{{out}}/cfg{{scale}}")
    logger.end()  # a RunLogger run ends when the caller says so
    if metrics:  # rank 0 only
        print("METRICS", scale, json.dumps(metrics))
"""
SCALES = (1.0, 2.0)


def test_ddp_evaluation_gives_one_process_counts_and_metrics_and_one_mlflow_run_per_evaluation(trained, tmp_path):
    ckpt = checkpoint(trained("nar"), "two")
    script = tmp_path / "ddp_evaluate.py"
    script.write_text(textwrap.dedent(EVAL_SCRIPT.format(scales=SCALES)))
    overrides = [*EVAL, "trainer.devices=2", "trainer.strategy=ddp", *tracking_overrides(tmp_path, "eval")]
    stdout = run([str(script), str(ckpt), str(tmp_path / "two"), *overrides])
    printed = [line.split(" ", 2) for line in stdout.splitlines() if line.startswith("METRICS")]
    assert [float(scale) for _, scale, _ in printed] == list(SCALES)  # printed once: rank 1 returned {}
    ddp_metrics = {float(scale): json.loads(values) for _, scale, values in printed}

    runs = runs_by_name(tmp_path, "eval")
    assert sorted(runs) == [f"eval-cfg{scale}" for scale in SCALES]
    module = GeneratorModule.load_from_checkpoint(ckpt, map_location="cpu")
    expected_counts = torch.bincount(class_balanced_labels(32, module.num_classes),
                                     minlength=module.num_classes).tolist()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    for scale in SCALES:
        (logged,) = runs[f"eval-cfg{scale}"]  # one run per evaluation, none from rank 1
        assert logged.info.status == "FINISHED"
        assert {a.path for a in client.list_artifacts(logged.info.run_id)} == {"eval_samples.png",
                                                                               "per_class_accuracy.csv"}
        assert logged.data.metrics["eval/class_accuracy"] == pytest.approx(ddp_metrics[scale]["class_accuracy"])

        one_device = [*EVAL, "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto",
                      f"eval.sampling.cfg_scale={scale}"]
        one_metrics = evaluate(module, merge(module.cfg, OmegaConf.from_dotlist(one_device)),
                               out_dir=tmp_path / "one" / f"cfg{scale}")
        per_class = {n: pd.read_csv(tmp_path / n / f"cfg{scale}" / "per_class_accuracy.csv") for n in ("one", "two")}
        assert per_class["two"]["count"].tolist() == per_class["one"]["count"].tolist() == expected_counts
        assert per_class["two"]["correct"].tolist() == per_class["one"]["correct"].tolist()
        for key in ("num_samples", "class_accuracy", "fid", "kid", "precision", "recall"):
            assert ddp_metrics[scale][key] == pytest.approx(one_metrics[key], rel=1e-4, abs=1e-6), key


def test_ddp_sweep_logs_one_parent_and_one_child_per_point(tmp_path):
    out = tmp_path / "results"
    tiny = [arg for arg in TRAIN if not arg.startswith(("model.", "trainer.max_steps"))]  # the variants set model.*
    run(["-m", "nar_bench.cli", "sweep", "experiments/ablation_heads.yaml", "--only", "ntp_raster,nar_dim_heads_mixed",
         "--out", str(out), *tiny, *EVAL, "trainer.max_steps=4", "data.batch_size=4", "trainer.devices=2",
         *tracking_overrides(tmp_path, experiment=None)])

    runs = [r for group in runs_by_name(tmp_path, "ablation_heads").values() for r in group]
    (parent,) = [r for r in runs if PARENT_TAG not in r.data.tags]  # rank 1 opened no parent
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    assert parent.info.run_name == "ablation_heads" and parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == ["nar_dim_heads_mixed", "ntp_raster"]  # none twice
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    for child in children:
        assert child.data.tags[PARENT_TAG] == parent.info.run_id and child.info.status == "FINISHED"
        config = client.download_artifacts(child.info.run_id, "config.yaml", str(tmp_path))  # no varying param
        assert yaml.safe_load(Path(config).read_text())["trainer"]["devices"] == 2
        assert {"eval/fid", "eval/class_accuracy", "val/loss", "train/loss"} <= set(child.data.metrics)
        assert len(client.get_metric_history(child.info.run_id, "train/loss")) == 4  # one point per step
        assert {"eval_samples.png", "per_class_accuracy.csv", "samples.png", "summary.csv"} <= {
            a.path for a in client.list_artifacts(child.info.run_id)}
    run_dirs = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "runs").iterdir())
    assert run_dirs == ["nar_dim_heads_mixed", "ntp_raster"]  # one folder per trained point, none from rank 1
    table = pd.read_csv(out / "runs.csv")
    assert table["variant"].tolist() == ["ntp_raster", "nar_dim_heads_mixed"] and (table["train_steps"] == 4).all()
    assert set(table["mlflow_run_id"]) == {r.info.run_id for r in children}
    assert (table["num_samples"] == 32).all()
