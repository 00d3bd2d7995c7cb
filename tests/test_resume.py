"""Sweeps and training that survive being killed: resumed sweeps skip their FINISHED points, a killed
`nar-bench train` continues its run from last.ckpt, runs of dead processes end KILLED, models that
cannot fit are refused before allocation, a sweep's parent run holds its result, and two sweeps may
open a fresh store at once.

Kills are real signals: SIGKILL of a subprocess running the CLI, SIGINT of this process (both sent
by the process itself from a hook at a fixed point, so the tests do not race the clock)."""

import gc
import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from nar_bench.cli import main
from nar_bench.metrics.cache import CACHE_ENV
from nar_bench.metrics.registry import SPEEDS
from nar_bench.tracking.lifecycle import owner_tags
from nar_bench.tracking.names import HOST_TAG, PARENT_TAG, PID_TAG, PROCESS_START_TAG
from tests.conftest import finish, run_cli, start_cli, start_python, tracking_overrides
from tests.test_sweep_report import TINY

pytestmark = pytest.mark.usefixtures("metrics_cache")
ROOT = Path(__file__).resolve().parents[1]
FAST_EVAL = ["eval.num_samples=16", "eval.reference_size=32", "eval.metrics=[fid]"]
THREE = ["sweep", "experiments/ablation_heads.yaml", "--only", "ntp_raster,nar_single_head,nar_dim_heads_mixed"]


def sweep_argv(tmp_path: Path) -> list[str]:
    return [*THREE, "--out", str(tmp_path / "results"), *TINY, *FAST_EVAL,
            *tracking_overrides(tmp_path, experiment=None)]


def runs_of(tmp_path: Path, experiment: str) -> tuple[MlflowClient, list]:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    return client, client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def split(runs: list) -> tuple[list, list]:
    return [r for r in runs if PARENT_TAG not in r.data.tags], [r for r in runs if PARENT_TAG in r.data.tags]


def run_cli_until_killed(hook: str, argv: list[str]) -> subprocess.CompletedProcess:
    """Runs the CLI in a subprocess after ``hook`` (Python source that patches it to SIGKILL itself)."""
    return run_cli(argv, hook)


def test_sweep_killed_by_sigkill_after_two_points_resumes_without_retraining_them(tmp_path):
    # the third point dies (SIGKILL) after its training, before its evaluation: its run is left RUNNING,
    # marked KILLED at the restart and continued (evaluated, not trained again) to FINISHED
    hook = """
        import nar_bench.run.sweep as sweep
        calls, evaluate = [], sweep.evaluate
        def killing_evaluate(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return evaluate(*args, **kwargs)
        sweep.evaluate = killing_evaluate
    """
    killed = run_cli_until_killed(hook, sweep_argv(tmp_path))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    _, runs = runs_of(tmp_path, "ablation_heads")
    (parent,), children = split(runs)
    first = {r.info.run_name: r.info.run_id for r in children if r.info.status == "FINISHED"}
    assert sorted(first) == ["nar_single_head", "ntp_raster"]
    assert parent.info.status == "RUNNING" and [r.info.status for r in children].count("RUNNING") == 1

    (dead,) = [r.info.run_id for r in children if r.info.status == "RUNNING"]
    again = run_cli(sweep_argv(tmp_path), REPORT_REOPEN)  # the same command again
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"reopening {dead} KILLED" in again.stdout  # the dead process's run, marked at the restart, continued
    assert "fitting" not in again.stdout  # nothing trained again
    client, runs = runs_of(tmp_path, "ablation_heads")
    (parent_again,), children = split(runs)
    assert parent_again.info.run_id == parent.info.run_id and parent_again.info.status == "FINISHED"
    finished = {r.info.run_name: r.info.run_id for r in children if r.info.status == "FINISHED"}
    assert len(finished) == len(children) == 3 and {k: finished[k] for k in first} == first  # not re-trained
    assert finished["nar_dim_heads_mixed"] == dead  # evaluated in the run that trained it
    table = pd.read_csv(tmp_path / "results" / "runs.csv")
    assert table["variant"].tolist() == ["ntp_raster", "nar_single_head", "nar_dim_heads_mixed"]
    assert table["mlflow_run_id"].tolist() == [finished[v] for v in table["variant"]]
    assert len({r.data.tags["nar_bench.point_key"] for r in children if r.info.status == "FINISHED"}) == 3
    assert len(list((tmp_path / "runs").iterdir())) == 3  # one folder per point: nothing trained twice


REPORT_REOPEN = """
    import nar_bench.tracking.mlflow as mlflow_module
    import nar_bench.run.sweep as sweep
    reopen, fit = mlflow_module.reopen, sweep.fit
    def reporting_reopen(c, run_id, tags):
        print("reopening", run_id, c.get_run(run_id).info.status, flush=True)
        return reopen(c, run_id, tags)
    def reporting_fit(cfg, name, *args, **kwargs):
        print("fitting", name, flush=True)
        return fit(cfg, name, *args, **kwargs)
    mlflow_module.reopen, sweep.fit = reporting_reopen, reporting_fit
"""


def test_sweep_interrupted_by_sigint_ends_runs_killed_then_resumes_and_logs_its_result_to_the_parent(
        tmp_path, monkeypatch):
    import nar_bench.run.sweep as sweep
    import nar_bench.run.train as train

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")  # log every sample, even under load
    trained = []  # weak references: a sweep must not keep the models of finished points alive
    real_fit, real_make_trainer = sweep.fit, train.make_trainer

    def fit(*args, **kwargs):
        gc.collect()
        assert all(ref() is None for ref in trained), "a finished point's model is still in memory"
        run = real_fit(*args, **kwargs)
        trained.append(weakref.ref(run.module))
        return run

    import lightning as L

    sent = []

    class SigintAtStep(L.Callback):  # Ctrl-C in the middle of the third point's training, once
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if len(trained) == 2 and trainer.global_step == 2 and not sent:
                sent.append(signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

    def make_trainer(cfg, logger, run_dir):
        trainer = real_make_trainer(cfg, logger, run_dir)
        trainer.callbacks.append(SigintAtStep())
        return trainer

    monkeypatch.setattr(sweep, "fit", fit)
    monkeypatch.setattr(train, "make_trainer", make_trainer)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as exit_:
        main(sweep_argv(tmp_path))
    assert exit_.value.code == 128 + signal.SIGINT and signal.getsignal(signal.SIGINT) == handler
    _, runs = runs_of(tmp_path, "ablation_heads")
    (parent,), children = split(runs)
    assert parent.info.status == "KILLED"
    assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED", "KILLED"]
    first = {r.info.run_name: r.info.run_id for r in children if r.info.status == "FINISHED"}

    assert main(sweep_argv(tmp_path)) == 0
    client, runs = runs_of(tmp_path, "ablation_heads")
    (parent_again,), children = split(runs)
    assert parent_again.info.run_id == parent.info.run_id and parent_again.info.status == "FINISHED"
    finished = {r.info.run_name: r.info.run_id for r in children if r.info.status == "FINISHED"}
    assert len(finished) == 3 and {k: finished[k] for k in first} == first
    assert len(pd.read_csv(tmp_path / "results" / "runs.csv")) == 3

    # the MLflow UI alone answers "which variant won": table, plot, report and metrics on the parent
    parent_id = parent.info.run_id
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"summary_table.json", "metrics.png", "summary.md", "runs.csv"} <= artifacts
    table = client.load_table(parent.info.experiment_id, "summary_table.json", run_ids=[parent_id])
    assert sorted(table["variant"]) == sorted(finished)  # the union, once (not appended per attempt)
    parent_run = client.get_run(parent_id)
    summary = pd.read_csv(tmp_path / "results" / "summary.csv").set_index("variant")
    for variant in finished:
        assert parent_run.data.metrics[f"fid/{variant}"] == pytest.approx(summary.loc[variant, "fid_mean"])
    assert parent_run.data.tags["nar_bench.best.fid"] == summary["fid_mean"].idxmin()
    # system metrics on the parent (open all sweep long) and on a training run
    assert "system/cpu_utilization_percentage" in parent_run.data.metrics
    assert any("system/system_memory_usage_megabytes" in r.data.metrics for r in children)


def test_cfg_points_of_a_resumed_sweep_evaluate_the_finished_training_from_its_checkpoint(tmp_path, monkeypatch):
    import nar_bench.run.sweep as sweep

    argv = ["sweep", "experiments/cfg_sweep.yaml", "--only", "nar", "--out", str(tmp_path / "results"), *TINY,
            *FAST_EVAL, *tracking_overrides(tmp_path, experiment=None),
            "sweep.grid={eval.sampling.cfg_scale: [1.0, 3.0]}"]
    real_evaluate, calls = sweep.evaluate, []

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(sweep, "evaluate", evaluate)
    with pytest.raises(SystemExit):
        main(argv)
    monkeypatch.setattr(sweep, "fit", lambda *a, **k: pytest.fail("the finished training was trained again"))
    assert main(argv) == 0
    _, runs = runs_of(tmp_path, "cfg_sweep")
    children = {r.info.run_name: r for r in split(runs)[1] if r.info.status == "FINISHED"}
    trained, reused = children["nar/cfg_scale=1.0"], children["nar/cfg_scale=3.0"]
    assert reused.data.tags["nar_bench.trained_in_run"] == trained.info.run_id
    assert len(list((tmp_path / "runs").iterdir())) == 1
    assert pd.read_csv(tmp_path / "results" / "summary.csv")["cfg_scale"].tolist() == [1.0, 3.0]


TRAIN = ["train", "experiments/demo.yaml", "model.size=tiny", "data.image_size=16", "data.grid_size=4",
         "data.batch_size=8", "data.num_val=8", "trainer.max_steps=6", "trainer.val_check_interval=3",
         "trainer.log_every_n_steps=1", "eval.samples_per_class=1"]


def test_killed_train_resumes_from_last_ckpt_to_max_steps_in_the_same_mlflow_run(tmp_path):
    hook = """
        import lightning as L
        import nar_bench.run.train as train
        class KillAtStep4(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == 4:  # after the step-3 checkpoint
                    os.kill(os.getpid(), signal.SIGKILL)
        make_trainer = train.make_trainer
        def killing_make_trainer(*args):
            trainer = make_trainer(*args)
            trainer.callbacks.append(KillAtStep4())
            return trainer
        train.make_trainer = killing_make_trainer
    """
    argv = [*TRAIN, *tracking_overrides(tmp_path)]
    killed = run_cli_until_killed(hook, argv)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    client, (run,) = runs_of(tmp_path, "test")
    assert run.info.status == "RUNNING"

    assert main([*argv, "--resume"]) == 0
    client, (resumed,) = runs_of(tmp_path, "test")  # one run: the same one
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert max(steps) == 5 and min(steps) == 0  # steps 0-2 before the kill, 3-5 after the resume
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [run_dir.name]
    assert pd.read_csv(run_dir / "summary.csv")["train_steps"].tolist() == [6]


def test_resume_without_a_run_to_resume_is_one_clear_error(tmp_path, capsys):
    assert main([*TRAIN, *tracking_overrides(tmp_path), "trainer.resume=latest"]) == 2
    err = capsys.readouterr().err
    assert "trainer.resume=latest" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns.db").exists()


def test_a_process_that_exited_but_is_not_reaped_yet_is_not_alive():
    """A SIGKILLed sweep stays a zombie until its parent reaps it (a test's, a launcher's); the other
    sweep waiting for its points must see it as dead, or both wait forever (found by the load run:
    the waiting sweep's parent reaped the dead one only after the waiting one finished)."""
    import psutil

    from nar_bench.tracking.lifecycle import owner_alive, process_alive

    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        tags = owner_tags() | {PID_TAG: str(child.pid)}
        tags[PROCESS_START_TAG] = f"{psutil.Process(child.pid).create_time():.2f}"
        assert owner_alive(tags) and process_alive(f"{tags[HOST_TAG]} {child.pid} {tags[PROCESS_START_TAG]}")
        child.stdin.close()  # it exits; nobody reaps it yet
        stat = Path(f"/proc/{child.pid}/stat")
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
            pass
        assert not owner_alive(tags) and not process_alive(f"{tags[HOST_TAG]} {child.pid} {tags[PROCESS_START_TAG]}")
    finally:
        child.wait()


def test_running_run_of_a_dead_process_is_marked_killed_at_the_next_start(tmp_path):
    from nar_bench.config import load_config
    from nar_bench.tracking.mlflow import experiment_id

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    exp = client.create_experiment("test")
    ghost = client.create_run(exp, run_name="nar-XXL", tags={**owner_tags(), PID_TAG: str(dead.pid),
                                                             PROCESS_START_TAG: "1.00"})
    alive = client.create_run(exp, run_name="mine", tags=owner_tags())  # this process: still running
    elsewhere = client.create_run(exp, run_name="other host", tags={**owner_tags(), HOST_TAG: "another-host"})

    experiment_id(load_config(None, tracking_overrides(tmp_path)).tracking)  # what every verb does first
    status = {r.info.run_id: r.info.status for r in client.search_runs([exp])}
    assert status[ghost.info.run_id] == "KILLED"
    assert status[alive.info.run_id] == "RUNNING" and status[elsewhere.info.run_id] == "RUNNING"


def test_model_that_cannot_fit_in_ram_is_refused_before_allocation(tmp_path, capsys):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # XXL (1.4B parameters) at a batch whose activations alone are hundreds of TB: fits no machine
    argv = ["train", "experiments/demo.yaml", "model.size=XXL", "data.batch_size=4096", *tracking_overrides(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "model.size=XXL" in err and "available RAM" in err and "choose a smaller model.size" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 1024  # the 5.5 GB of XXL fp32 weights were never allocated
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns.db").exists()


def test_two_sweeps_opening_a_fresh_store_at_once_both_succeed(tmp_path):
    script = textwrap.dedent("""
        import sys
        from omegaconf import OmegaConf
        import nar_bench
        from nar_bench.tracking.mlflow import parent_run
        tracking = OmegaConf.from_dotlist(sys.argv[1:]).tracking
        with parent_run(tracking, "sweep", {"points": 1}, key="k", fresh=True) as run_id:
            print(run_id)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    children = [start_python(["-c", script, *tracking_overrides(tmp_path)], env) for _ in range(2)]
    results = [finish(child) for child in children]
    assert [done.returncode for done in results] == [0, 0], [done.stderr[-2000:] for done in results]
    _, runs = runs_of(tmp_path, "test")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    assert {r.info.run_id for r in runs} == {done.stdout.strip() for done in results}


# two points; checkpoints at steps 2 and 4; each evaluation writes 2 shards of 8 samples
TWO = ["sweep", "experiments/ablation_heads.yaml", "--only", "ntp_raster,nar_single_head", *TINY, *FAST_EVAL,
       "trainer.val_check_interval=2", "eval.shard_size=8"]
REPORT_WORK = REPORT_REOPEN + """
    import nar_bench.metrics.sample_store as store_module
    write_shard = store_module.SampleStore.write_shard
    def reporting_write_shard(self, shard, *args):
        print("writing shard", shard, flush=True)
        return write_shard(self, shard, *args)
    store_module.SampleStore.write_shard = reporting_write_shard
"""
KILL_IN_SECOND_TRAINING = REPORT_WORK + """
    import lightning as L
    import nar_bench.run.train as train
    trainings, make_trainer = [], train.make_trainer
    class KillAtStep3(L.Callback):  # after the step-2 checkpoint
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGKILL)
    def killing_make_trainer(*args):
        trainer = make_trainer(*args)
        trainings.append(1)
        if len(trainings) == 2:
            trainer.callbacks.append(KillAtStep3())
        return trainer
    train.make_trainer = killing_make_trainer
"""
KILL_IN_FIRST_EVALUATION = REPORT_WORK + """
    def killing_write_shard(self, shard, *args):
        if shard == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return reporting_write_shard(self, shard, *args)
    store_module.SampleStore.write_shard = killing_write_shard
"""
# ids and times: the speed records (metrics.registry.SPEEDS) are measured, not results
NOT_RESULTS = ["mlflow_run_id", "trained_in_run", "generate_seconds", *SPEEDS]


def two_points(folder: Path) -> list[str]:
    return [*TWO, "--out", str(folder / "results"), *tracking_overrides(folder, experiment=None)]


def printed(done: subprocess.CompletedProcess, prefix: str) -> list[str]:
    """What the hooks printed after ``prefix`` (progress bars share the lines)."""
    return [match.strip() for match in re.findall(rf"{prefix} ([^\r\n]*)", done.stdout)]


@pytest.fixture(scope="module")
def uninterrupted_sweep(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("uninterrupted")
    with pytest.MonkeyPatch.context() as patch:  # the metrics_cache fixture's folder
        patch.setenv(CACHE_ENV, str(tmp_path_factory.getbasetemp() / "metrics-cache"))
        done = run_cli(two_points(folder))
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def assert_same_results(folder: Path, reference: Path) -> None:
    """Same rows as the uninterrupted sweep, and the same per-step losses, each step once."""
    ours, theirs = (pd.read_csv(f / "results" / "runs.csv").drop(columns=NOT_RESULTS, errors="ignore")
                    for f in (folder, reference))
    pd.testing.assert_frame_equal(ours, theirs)
    (client, runs), (ref_client, ref_runs) = runs_of(folder, "ablation_heads"), runs_of(reference, "ablation_heads")
    for child in split(runs)[1]:
        (ref_child,) = [r for r in split(ref_runs)[1] if r.info.run_name == child.info.run_name]
        for key in ("train/loss", "val/loss"):
            history = [(m.step, m.value) for m in client.get_metric_history(child.info.run_id, key)]
            ref_history = [(m.step, m.value) for m in ref_client.get_metric_history(ref_child.info.run_id, key)]
            assert sorted(history) == sorted(ref_history), (child.info.run_name, key)


def test_sweep_sigkilled_after_its_first_point_resumes_the_second_from_its_checkpoint_in_its_run(
        tmp_path, uninterrupted_sweep):
    killed = run_cli(two_points(tmp_path), KILL_IN_SECOND_TRAINING)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert printed(killed, "fitting") == ["ntp_raster", "nar_single_head"]
    _, runs = runs_of(tmp_path, "ablation_heads")
    (parent,), children = split(runs)
    status = {r.info.run_name: r.info.status for r in children}
    assert parent.info.status == "RUNNING" and status == {"ntp_raster": "FINISHED", "nar_single_head": "RUNNING"}
    (dead,) = [r for r in children if r.info.status == "RUNNING"]
    run_dir = Path(dead.data.tags["nar_bench.run_dir"])
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2

    again = run_cli(two_points(tmp_path), REPORT_WORK)
    assert again.returncode == 0, again.stderr[-3000:]
    assert printed(again, "reopening") == [f"{parent.info.run_id} KILLED", f"{dead.info.run_id} KILLED"]
    assert printed(again, "fitting") == ["nar_single_head"]  # from its step-2 checkpoint (the test above: exact)
    _, runs = runs_of(tmp_path, "ablation_heads")
    (parent_again,), children = split(runs)
    assert parent_again.info.status == "FINISHED" and sorted(r.info.status for r in children) == ["FINISHED"] * 2
    assert dead.info.run_id in {r.info.run_id for r in children}  # continued in its own run
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(
        Path(r.data.tags["nar_bench.run_dir"]).name for r in children)  # one folder per point
    assert_same_results(tmp_path, uninterrupted_sweep)


def test_sweep_point_sigkilled_while_evaluating_continues_from_its_checkpoint_and_shards_in_its_run(
        tmp_path, uninterrupted_sweep):
    killed = run_cli(two_points(tmp_path), KILL_IN_FIRST_EVALUATION)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert printed(killed, "writing shard") == ["0"]
    _, runs = runs_of(tmp_path, "ablation_heads")
    (dead,) = split(runs)[1]

    again = run_cli(two_points(tmp_path), REPORT_WORK)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{dead.info.run_id} KILLED" in printed(again, "reopening")
    assert printed(again, "fitting") == ["nar_single_head"]  # the killed point's training was not repeated
    assert printed(again, "writing shard") == ["1", "0", "1"]  # nor its first shard
    _, runs = runs_of(tmp_path, "ablation_heads")
    children = {r.info.run_name: r for r in split(runs)[1]}
    assert children["ntp_raster"].info.run_id == dead.info.run_id and len(children) == 2
    assert all(r.info.status == "FINISHED" for r in children.values())
    assert_same_results(tmp_path, uninterrupted_sweep)


MEET_AT_FIRST_POINT = """
    import pathlib, time
    import nar_bench.run.sweep as sweep
    call = sweep.TrainAndEvaluate.__call__
    def meeting(self, name, cfg, parent_run_id):  # both processes are inside the sweep before either trains
        meet = pathlib.Path(MEET)
        (meet / str(os.getpid())).touch()
        while len(list(meet.iterdir())) < 2:
            time.sleep(0.05)
        print("running point", name, flush=True)
        return call(self, name, cfg, parent_run_id)
    sweep.TrainAndEvaluate.__call__ = meeting
"""


def test_two_identical_sweeps_started_together_run_each_point_once_in_one_parent_run(tmp_path):
    (tmp_path / "meet").mkdir()
    hook = f"MEET = {str(tmp_path / 'meet')!r}\n{textwrap.dedent(MEET_AT_FIRST_POINT)}"
    children = [start_cli(two_points(tmp_path), hook) for _ in range(2)]
    done = [finish(child) for child in children]
    assert [d.returncode for d in done] == [0, 0], [d.stderr[-3000:] for d in done]
    ran = [printed(d, "running point") for d in done]
    assert sorted(ran[0] + ran[1]) == ["nar_single_head", "ntp_raster"] and len(ran[0]) == len(ran[1]) == 1
    assert sum("joining sweep" in d.stdout for d in done) == 1
    client, runs = runs_of(tmp_path, "ablation_heads")
    (parent,), points = split(runs)
    assert parent.info.status == "FINISHED" and sorted(r.info.status for r in points) == ["FINISHED"] * 2
    assert sorted(r.info.run_name for r in points) == ["nar_single_head", "ntp_raster"]  # not run twice
    assert len(list((tmp_path / "runs").iterdir())) == 2
    assert not [tag for tag in client.get_run(parent.info.run_id).data.tags if tag.startswith("nar_bench.worker.")]
    for d in done:  # each process reports the whole sweep
        assert str(tmp_path / "results" / "summary.csv") in d.stdout
    assert pd.read_csv(tmp_path / "results" / "runs.csv")["variant"].tolist() == ["ntp_raster", "nar_single_head"]


DIE_IN_FIRST_TRAINING = MEET_AT_FIRST_POINT + """
    import lightning as L
    import nar_bench.run.train as train
    make_trainer = train.make_trainer
    class KillAtStep3(L.Callback):  # after the step-2 checkpoint, in the first process that trains ntp_raster
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGKILL)
    def killing_make_trainer(cfg, *args):
        trainer = make_trainer(cfg, *args)
        marker = pathlib.Path(MEET).parent / "killed-once"
        if cfg.model.paradigm == "ar" and not marker.exists():
            marker.touch()
            trainer.callbacks.append(KillAtStep3())
        return trainer
    train.make_trainer = killing_make_trainer
"""


def test_a_sweep_process_that_dies_leaves_its_points_to_the_other_which_continues_them(tmp_path):
    (tmp_path / "meet").mkdir()
    hook = f"MEET = {str(tmp_path / 'meet')!r}\n{textwrap.dedent(DIE_IN_FIRST_TRAINING)}"
    done = [finish(child) for child in [start_cli(two_points(tmp_path), hook) for _ in range(2)]]
    assert sorted(d.returncode for d in done) == [-signal.SIGKILL, 0], [d.stderr[-3000:] for d in done]
    dead, alive = sorted(done, key=lambda d: d.returncode)
    assert printed(dead, "running point") == ["ntp_raster"]
    assert printed(alive, "running point") == ["nar_single_head", "ntp_raster"]
    assert re.search(r"continuing point 'ntp_raster' in its KILLED run", alive.stdout)  # taken over, not restarted
    _, runs = runs_of(tmp_path, "ablation_heads")
    (parent,), points = split(runs)
    assert parent.info.status == "FINISHED" and sorted(r.info.status for r in points) == ["FINISHED"] * 2
    assert len(list((tmp_path / "runs").iterdir())) == 2  # the dead process's folder was continued
