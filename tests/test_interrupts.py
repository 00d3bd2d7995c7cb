"""Every verb ends in its true state: Ctrl-C (SIGINT) or SIGTERM in the middle of its work prints one
line and exits with 128 + the signal (130 / 143), its open MLflow runs end KILLED; an error ends them
FAILED; a Ctrl-C that Python loses (raised inside a finalizer) still stops a sweep.

Each case runs the CLI in a subprocess whose hook sends the signal to the process itself at a fixed
point of the work (no race with the clock)."""

import re
import signal
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_cli, tracking_overrides
from tests.test_cli import TINY as TRAIN_TINY
from tests.test_cli_data_verbs import DATA, STEPS, VQ
from tests.test_efficiency import bench_args
from tests.test_run_evaluate import TINY as EVAL_TINY

pytestmark = pytest.mark.usefixtures("metrics_cache")

TRAIN = ["train", "experiments/demo.yaml", *TRAIN_TINY]
SWEEP = ["sweep", "experiments/ablation_heads.yaml", "--only", "ntp_raster,nar_single_head", "data.image_size=16",
         "data.grid_size=4", "data.batch_size=8", "data.num_val=16", "trainer.max_steps=2",
         "trainer.val_check_interval=2", "eval.num_samples=16", "eval.batch_size=16", "eval.reference_size=32",
         "eval.samples_per_class=1", "eval.extractor_options.steps=20", "eval.extractor_options.width=8",
         "eval.metrics=[fid]"]
AT_TRAINING_STEP_2 = """
    import lightning as L
    import nar_bench.lit.trainer as trainer_module
    fit_loop_step = trainer_module.StepSeeds.on_train_batch_start
    def signalling(self, trainer, *args):
        if trainer.global_step == 2:
            os.kill(os.getpid(), SIGNAL)
        return fit_loop_step(self, trainer, *args)
    trainer_module.StepSeeds.on_train_batch_start = signalling
"""
AT_SECOND_SHARD = """
    import nar_bench.metrics.sample_store as store_module
    write_shard = store_module.SampleStore.write_shard
    def signalling(self, shard, *args):
        if shard == 1:
            os.kill(os.getpid(), SIGNAL)
        return write_shard(self, shard, *args)
    store_module.SampleStore.write_shard = signalling
"""
IN_BENCH_MODEL = """
    import nar_bench.bench.runner as runner
    bench_model = runner.bench_model
    def signalling(label, *args, **kwargs):
        if label == "nar-tiny":
            os.kill(os.getpid(), SIGNAL)
        yield from bench_model(label, *args, **kwargs)
    runner.bench_model = signalling
"""
LOST_IN_A_FINALIZER = """
    import weakref
    import nar_bench.run.sweep as sweep
    class Held:
        pass
    def signalling_finalizer():  # after the first point, as it frees its model: Python drops the KeyboardInterrupt
        held = Held()
        weakref.finalize(held, lambda: os.kill(os.getpid(), SIGNAL))
        del held
    sweep._malloc_trim = signalling_finalizer
"""
AT_VERB_START = """
    import importlib
    module = importlib.import_module(VERB)
    verb_main = module.main
    def signalling(args):
        os.kill(os.getpid(), SIGNAL)
        return verb_main(args)
    module.main = signalling
"""


def signalled(argv: list[str], hook: str, signum: int, verb: str = "") -> subprocess.CompletedProcess:
    done = run_cli(argv, f"SIGNAL = {int(signum)}\nVERB = {verb!r}\n{textwrap.dedent(hook)}")
    name = signal.Signals(signum).name
    output = done.stdout + done.stderr
    assert done.returncode == 128 + signum, output[-3000:]
    assert output.count(f"nar-bench: interrupted by {name}; open runs marked KILLED") == 1, output[-3000:]
    for noise in ("Traceback", "Exception ignored", "Detected KeyboardInterrupt"):
        assert noise not in output, output[-3000:]
    return done


def statuses(folder: Path, experiment: str = "test") -> dict[str, str]:
    client = MlflowClient(f"sqlite:///{folder}/mlruns.db")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return {r.info.run_name: r.info.status for r in runs}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_train_interrupted_mid_training_ends_killed(tmp_path, signum):
    signalled([*TRAIN, *tracking_overrides(tmp_path)], AT_TRAINING_STEP_2, signum)
    assert statuses(tmp_path) == {"nar-tiny": "KILLED"}


def test_train_tokenizer_interrupted_ends_killed(tmp_path):
    signalled(["train-tokenizer", "experiments/demo.yaml", *VQ, *DATA, *STEPS, "trainer.max_steps=3",
               *tracking_overrides(tmp_path)], AT_TRAINING_STEP_2, signal.SIGTERM)
    assert statuses(tmp_path) == {"tokenizer-vq": "KILLED"}


def test_evaluate_interrupted_mid_shard_ends_killed_with_nothing_half_written(
        tmp_path, shapes_reference, random_inception_weights):  # noqa: F811
    official = tmp_path / "official.pt"
    import torch

    from nar_bench.checkpoints import to_official
    from tests.test_run_evaluate import tiny_module

    torch.save(to_official(tiny_module()[1].paradigm), official)
    argv = ["evaluate", "experiments/demo.yaml", "--ckpt", str(official), "--num-samples", "32", "--name", "tiny",
            *EVAL_TINY, f"eval.reference={shapes_reference}",
            f"eval.extractor_options.weights_path={random_inception_weights}", *tracking_overrides(tmp_path)]
    signalled(argv, AT_SECOND_SHARD, signal.SIGTERM)
    assert statuses(tmp_path) == {"tiny": "KILLED"}
    folder = tmp_path / "runs" / "tiny"
    # the signal arrives while shard 1 is written on the writer thread: that write is finished (it is
    # atomic), then the run stops: two whole shards, no partial file, no samples.npz, no eval.json
    shards = sorted(folder.rglob("*.npz"))
    assert [p.name for p in shards] == ["shard_00000.npz", "shard_00001.npz"] and not (folder / "eval.json").exists()
    for k, path in enumerate(shards):
        with np.load(path) as npz:
            assert npz["index"].tolist() == list(range(8 * k, 8 * k + 8)) and npz["arr_0"].shape[0] == 8
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_bench_interrupted_ends_its_parent_killed(tmp_path):
    signalled(bench_args(tmp_path), IN_BENCH_MODEL, signal.SIGTERM)
    assert statuses(tmp_path, "throughput")["throughput-sweep"] == "KILLED"


def test_sweep_interrupted_while_evaluating_ends_the_point_and_the_sweep_killed(tmp_path):
    signalled([*SWEEP, "--out", str(tmp_path / "results"), "eval.shard_size=8",
               *tracking_overrides(tmp_path, experiment=None)], AT_SECOND_SHARD, signal.SIGTERM)
    assert statuses(tmp_path, "ablation_heads") == {"ablation_heads": "KILLED", "ntp_raster": "KILLED"}


def test_a_ctrl_c_python_loses_in_a_finalizer_still_stops_the_sweep(tmp_path):
    done = signalled([*SWEEP, "--out", str(tmp_path / "results"), *tracking_overrides(tmp_path, experiment=None)],
                     LOST_IN_A_FINALIZER, signal.SIGINT)
    # the first point had finished; the second never started, and the sweep is not FINISHED
    assert statuses(tmp_path, "ablation_heads") == {"ablation_heads": "KILLED", "ntp_raster": "FINISHED"}
    assert not re.search(r"point 2/2", done.stdout)


@pytest.mark.parametrize("argv", [
    ["sample", "--ckpt", "missing.ckpt"],
    ["reference", "experiments/demo.yaml", "--out", "{tmp}/ref.npz"],
    ["report", "experiments/ablation_heads.yaml", "--out", "{tmp}/report"],
    ["order-gifs", "--out", "{tmp}/order"],
    ["extract-codes", "experiments/demo.yaml", "{tmp}/codes"],
], ids=lambda argv: argv[0])
def test_every_other_verb_stops_on_sigint_in_one_line(tmp_path, argv):
    from nar_bench.cli import build_parser

    verb = build_parser().parse_known_args(argv)[0].verb
    signalled([arg.format(tmp=tmp_path) for arg in argv], AT_VERB_START, signal.SIGINT, verb)


def test_errors_end_runs_failed(tmp_path):
    failing = """
        import nar_bench.lit.trainer as trainer_module
        def failing(self, trainer, *args):
            raise RuntimeError("a bug in a training step")
        trainer_module.StepSeeds.on_train_batch_start = failing
    """
    done = run_cli([*TRAIN, *tracking_overrides(tmp_path)], failing)
    assert done.returncode == 1 and "RuntimeError: a bug in a training step" in done.stderr
    assert statuses(tmp_path) == {"nar-tiny": "FAILED"}


def test_a_signal_inside_a_store_write_stops_the_work_after_that_write(tmp_path):
    """Raised inside an MLflow write, the KeyboardInterrupt could leave its connection holding SQLite's
    write lock (a busy machine's load run: ending the runs KILLED then failed on "database is locked");
    it is raised once the write is done. Here the signal arrives while SQLAlchemy executes the write."""
    import os

    from sqlalchemy import event

    from nar_bench.tracking.lifecycle import interruptible

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    run_id = client.create_run(client.create_experiment("interrupts")).info.run_id
    sent = []

    def signal_inside_the_write(conn, cursor, statement, *args):
        if statement.startswith("INSERT INTO tags") and not sent:
            sent.append(statement)
            os.kill(os.getpid(), signal.SIGTERM)

    event.listen(client._tracking_client.store.engine, "before_cursor_execute", signal_inside_the_write)
    with pytest.raises(SystemExit) as exit_:
        with interruptible():
            client.set_tag(run_id, "written", "yes")
            while True:  # the work the signal stops (the hang guard ends the test if it never comes)
                signal.pause()
    assert exit_.value.code == 128 + signal.SIGTERM and sent
    assert client.get_run(run_id).data.tags["written"] == "yes"  # the write the signal landed in completed
    client.set_terminated(run_id, status="KILLED")  # and holds no lock
    assert client.get_run(run_id).info.status == "KILLED"
