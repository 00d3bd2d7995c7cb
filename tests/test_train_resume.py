"""`nar-bench train --resume` is exact: a run SIGKILLed mid-epoch and resumed from its last checkpoint
logs the same per-step losses, once each, in the same MLflow run, and ends with the same weights as
the run that was never interrupted (CPU, fp32, the tiny model, one torch thread in every process).

The data order (``StepSampler``) and the RNG (``StepSeeds``) are functions of (seed, step), so the
unit tests check those; the CLI test kills a real process."""

import signal

import pytest
import torch
from mlflow.tracking import MlflowClient

from nar_bench.lit.resumable import StepSampler, counter_seed
from tests.conftest import run_cli, tracking_overrides

# 40 training images in batches of 8: 5 steps an epoch, so 12 steps cross two epoch boundaries;
# checkpoints at steps 4, 8, 12
TRAIN = ["train", "experiments/demo.yaml", "model.size=tiny", "data.image_size=16", "data.grid_size=4",
         "data.num_train=40", "data.batch_size=8", "data.num_val=8", "trainer.max_steps=12",
         "trainer.val_check_interval=4", "trainer.log_every_n_steps=1", "eval.samples_per_class=1"]
KILL_AT_STEP_10 = """
    import lightning as L
    import nar_bench.lit.trainer as trainer_module
    class KillAtStep10(L.Callback):  # after the step-8 checkpoint, in the epoch that started at step 10
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 10:
                os.kill(os.getpid(), signal.SIGKILL)
    make_trainer = trainer_module.make_trainer
    def killing_make_trainer(*args):
        trainer = make_trainer(*args)
        trainer.callbacks.append(KillAtStep10())
        return trainer
    import nar_bench.run.train as train
    train.make_trainer = killing_make_trainer
"""


REPORT_REOPEN = """
    import nar_bench.tracking.mlflow as mlflow_module
    reopen = mlflow_module.reopen
    def reporting_reopen(c, run_id, tags):
        print("reopening", run_id, c.get_run(run_id).info.status, flush=True)
        return reopen(c, run_id, tags)
    mlflow_module.reopen = reporting_reopen
"""


def epochs(sampler: StepSampler, count: int) -> list[int]:
    return [i for _ in range(count) for i in sampler]


def test_step_sampler_resumed_at_any_step_continues_the_uninterrupted_order():
    whole = epochs(StepSampler(43, 4, seed=3), 4)  # 10 batches an epoch; 3 items left out each epoch
    assert len(whole) == 4 * 40 and all(len(set(whole[e * 40:(e + 1) * 40])) == 40 for e in range(4))
    assert whole[:40] != whole[40:80]  # reshuffled every epoch
    for step in (1, 9, 10, 17, 29):
        resumed = StepSampler(43, 4, seed=3, start_step=step)
        assert epochs(resumed, 4 - step // 10) == whole[step * 4:], step
    assert epochs(StepSampler(43, 4, seed=4), 1) != whole[:40]
    ranks = [epochs(StepSampler(43, 4, seed=3, num_replicas=2, rank=r), 2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2 * 20 and not set(ranks[0][:20]) & set(ranks[1][:20])


def test_counter_seeds_differ_for_nearby_steps_and_ranks():
    seeds = {counter_seed(0, step, rank) for step in range(100) for rank in range(4)}
    assert len(seeds) == 400 and all(0 <= s < 2**63 for s in seeds)


def losses(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_train_sigkilled_mid_epoch_resumes_to_the_same_losses_and_weights_in_the_same_run(tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    done = run_cli([*TRAIN, *tracking_overrides(whole)])
    assert done.returncode == 0, done.stderr[-3000:]
    killed = run_cli([*TRAIN, *tracking_overrides(parts)], KILL_AT_STEP_10)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (run_dir,) = (parts / "runs").iterdir()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 8

    resumed = run_cli([*TRAIN, *tracking_overrides(parts), "--resume"], REPORT_REOPEN)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (reopened,) = [line for line in resumed.stdout.splitlines() if line.startswith("reopening ")]
    assert reopened.endswith(" KILLED")  # the dead process's run, marked at the restart, then resumed

    reference, client = MlflowClient(f"sqlite:///{whole}/mlruns.db"), MlflowClient(f"sqlite:///{parts}/mlruns.db")
    (ref_run,) = reference.search_runs([reference.get_experiment_by_name("test").experiment_id])
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])  # one run: the same
    assert run.info.status == "FINISHED" and [p.name for p in (parts / "runs").iterdir()] == [run_dir.name]
    for key in ("train/loss", "val/loss", "lr-AdamW"):
        ours, theirs = losses(client, run.info.run_id, key), losses(reference, ref_run.info.run_id, key)
        assert [s for s, _ in ours] == sorted(set(s for s, _ in ours)), f"{key}: a step logged twice"
        assert ours == theirs, key
    assert [s for s, _ in losses(client, run.info.run_id, "train/loss")] == list(range(12))
    (ref_dir,) = (whole / "runs").iterdir()
    ours = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    theirs = torch.load(ref_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ours["global_step"] == theirs["global_step"] == 12
    for name, tensor in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][name], tensor), name
    assert run.data.metrics["train/loss"] == pytest.approx(ref_run.data.metrics["train/loss"], abs=0)
