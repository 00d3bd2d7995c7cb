"""`nar-bench evaluate` / `nar-bench reference`: class-balanced samples with per-sample seeds into
resumable ADM shards, bit-identical for any batch size and for 1 vs 2 DDP processes, ADM metrics
against a reference batch, one MLflow run and eval.json; one clear error per bad input.

Tiny everything: 16px shapes on a 4x4 grid, the tiny model with random heads, InceptionV3 with
random weights, a tmp SQLite MLflow store.
"""

import json
import os
import re
import signal
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from nar_bench.checkpoints import to_official
from nar_bench.cli import main as cli
from nar_bench.config import load_config
from nar_bench.evaluation import evaluate
from nar_bench.evaluation.samples import generate_samples, sample_settings
from nar_bench.lit.module import GeneratorModule
from nar_bench.metrics.registry import SPEEDS
from nar_bench.metrics.sample_store import SampleStore
from tests.conftest import randomize_heads, run_cli, run_python, tracking_overrides

TINY = ["model.size=tiny", "model.paradigm=nar", "data.image_size=16", "data.grid_size=4", "trainer.accelerator=cpu",
        "trainer.devices=1", "eval.batch_size=8", "eval.shard_size=8", "eval.decode_batch=4",
        "eval.samples_per_class=1", "eval.sampling.top_k=8"]
ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "experiments" / "demo.yaml")
CLASSES = 16  # the shapes dataset
CPU_SPEED = set(SPEEDS) - {"peak_mem_gb"}  # every speed record but the GPU's memory

pytestmark = pytest.mark.usefixtures("single_thread", "metrics_cache")


def tiny_module(*overrides: str) -> tuple:
    cfg = load_config(DEMO, [*TINY, *overrides])
    torch.manual_seed(0)
    module = GeneratorModule(cfg, num_classes=CLASSES)
    randomize_heads(module.paradigm, std=1.0)  # zero-initialised heads would make every sample the same
    return cfg, module


def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as npz:
        return npz["arr_0"], npz["arr_1"]


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """32 samples (2 per class, 4 shards) generated in one go, batch size 8."""
    cfg, module = tiny_module()
    out = tmp_path_factory.mktemp("full") / "samples.npz"
    return generate_samples(module, cfg, 32, out, 8, sample_settings(cfg, CLASSES))


def test_samples_are_class_balanced_in_a_fixed_order_and_independent_of_batch_size(uninterrupted, tmp_path):
    images, labels = read(uninterrupted)
    assert images.shape == (32, 16, 16, 3) and images.dtype == np.uint8
    assert labels.tolist() == [i % CLASSES for i in range(32)]
    assert np.bincount(labels, minlength=CLASSES).tolist() == [2] * CLASSES
    assert not uninterrupted.with_name(uninterrupted.name + ".shards").exists()  # shards removed once assembled
    cfg, module = tiny_module()
    for batch in (7, 32):
        other = generate_samples(module, cfg, 32, tmp_path / f"b{batch}.npz", batch, sample_settings(cfg, CLASSES))
        assert np.array_equal(read(other)[0], images), batch
    assert len(np.unique(images.reshape(32, -1), axis=0)) > CLASSES  # samples of a class differ


def test_a_killed_run_resumes_from_its_shards_and_equals_an_uninterrupted_one(uninterrupted, tmp_path, monkeypatch):
    cfg, module = tiny_module()
    out = tmp_path / "samples.npz"
    written = []
    original = SampleStore.write_shard

    def kill_after_first(self, shard, images, labels):
        if written:
            raise Killed  # the process dies while generating its second shard
        written.append(shard)
        return original(self, shard, images, labels)

    monkeypatch.setattr(SampleStore, "write_shard", kill_after_first)
    with pytest.raises(Killed):
        generate_samples(module, cfg, 32, out, 8, sample_settings(cfg, CLASSES))
    assert not out.exists() and [p.name for p in out.parent.glob("*.npz")] == []  # never a partial final file
    assert sorted(p.name for p in (tmp_path / "samples.npz.shards").glob("*.npz")) == ["shard_00000.npz"]
    monkeypatch.setattr(SampleStore, "write_shard", lambda self, *a: (written.append(a[0]), original(self, *a))[1])
    generate_samples(module, cfg, 32, out, 8, sample_settings(cfg, CLASSES))
    assert written == [0, 1, 2, 3]  # the rerun generated shards 1-3 only
    for ours, theirs in zip(read(out), read(uninterrupted), strict=True):
        assert np.array_equal(ours, theirs)


def test_resuming_with_other_settings_is_refused(tmp_path):
    store = SampleStore(tmp_path / "s.npz", 8, 4, {"seed": 0})
    store.open()
    store.write_shard(0, np.zeros((4, 2, 2, 3), np.uint8), np.zeros(4, int))
    with pytest.raises(Exception, match="other settings .*seed"):
        SampleStore(tmp_path / "s.npz", 8, 4, {"seed": 1}).open()
    with pytest.raises(Exception, match=r"shards \[1\] are not written"):
        store.assemble()


DDP_SCRIPT = """
import sys
import torch
import nar_bench
from nar_bench.config import load_config
from nar_bench.lit.module import GeneratorModule
from nar_bench.metrics.registry import SPEEDS
from nar_bench.evaluation.samples import generate_samples, sample_settings
from tests.conftest import randomize_heads

cfg = load_config("experiments/demo.yaml", {overrides!r})
torch.manual_seed(0)  # the same weights on both ranks
module = GeneratorModule(cfg, num_classes=16)
randomize_heads(module.paradigm, std=1.0)
generate_samples(module, cfg, 32, sys.argv[1], 8, sample_settings(cfg, 16))
"""


def test_two_ddp_processes_write_the_same_npz_as_one(uninterrupted, tmp_path):
    """Two CPU processes (gloo) through Lightning's own DDP launcher, as on a multi-GPU machine:
    each rank writes its shards, rank 0 assembles."""
    script = tmp_path / "ddp_generate.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(overrides=[*TINY, "trainer.devices=2",
                                                                   "trainer.strategy=ddp"])))
    out = tmp_path / "ddp.npz"
    done = run_python([str(script), str(out)], {**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert out.read_bytes() == uninterrupted.read_bytes()  # the whole file, byte for byte


def test_evaluate_verb_scores_an_official_weights_file_and_records_everything(
        tmp_path, shapes_reference, random_inception_weights):
    cfg, module = tiny_module()
    torch.save(to_official(module.paradigm), tmp_path / "official.pt")
    overrides = [*TINY, *tracking_overrides(tmp_path), f"eval.reference={shapes_reference}",
                 f"eval.extractor_options.weights_path={random_inception_weights}"]
    config = DEMO
    assert cli(["evaluate", config, "--ckpt", str(tmp_path / "official.pt"), "--num-samples", "16", "--name",
                "tiny", "--png-dir", str(tmp_path / "png"), *overrides]) == 0
    record = json.loads((tmp_path / "runs" / "tiny" / "eval.json").read_text())
    assert set(record["metrics"]) == {"fid", "sfid", "is", "is_std", "precision", "recall", "num_samples"}
    assert all(np.isfinite(v) for v in record["metrics"].values()) and record["metrics"]["fid"] > 0
    assert record["num_samples"] == 16 and record["seed"] == 0 and record["sampling"]["top_k"] == 8
    assert len(record["checkpoint"]["sha256"]) == len(record["reference"]["sha256"]) == 64
    assert {"command", "commit", "device", "date"} <= set(record["provenance"])
    images, labels = read(tmp_path / "runs" / "tiny" / "samples.npz")
    assert images.shape == (16, 16, 16, 3) and labels.tolist() == list(range(16))
    assert len(list((tmp_path / "png").glob("*.png"))) == 16
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    run = client.get_run(record["mlflow_run_id"])
    assert run.data.metrics["eval/fid"] == pytest.approx(record["metrics"]["fid"])
    assert record["steps_per_image"] == module.paradigm.num_steps == run.data.metrics["eval/steps_per_image"]
    assert run.data.params["num_samples"] == "16" and record["checkpoint"]["sha256"] in str(run.data.params)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"eval_samples.png", "eval.json"}
    assert run.info.status == "FINISHED"  # not left RUNNING for the next start to mark KILLED
    assert record["protocol"]["name"] == "adm" and record["protocol"]["reference"] == record["reference"]
    # its speed next to its quality: in eval.json and as MLflow metrics; progress logged while generating
    speed = record["speed"]
    assert set(speed) == CPU_SPEED and all(v >= 0 for v in speed.values()) and speed["generate_img_s"] > 0
    assert speed["wall_s"] == pytest.approx(record["generate_seconds"] + speed["score_s"])
    assert run.data.metrics["eval/generate_img_s"] == pytest.approx(speed["generate_img_s"])
    assert [m.value for m in client.get_metric_history(run.info.run_id, "progress/samples_done")] == [8.0, 16.0]
    assert client.get_metric_history(run.info.run_id, "progress/eta_s")[-1].value == 0
    assert {key: record["settings"][key] for key in ("engine", "dtype", "batch_size", "decode_batch")} == {
        "engine": "eager", "dtype": "32-true", "batch_size": 8, "decode_batch": 4}


def test_the_sweep_evaluation_scores_the_same_shards_with_adm_metrics_given_a_reference(
        tmp_path, uninterrupted, shapes_reference, random_inception_weights):
    cfg, module = tiny_module(f"eval.reference={shapes_reference}",
                              f"eval.extractor_options.weights_path={random_inception_weights}")
    metrics = evaluate(module, cfg, num_samples=32, batch_size=16, out_dir=tmp_path)
    assert set(metrics) == {"fid", "sfid", "is", "is_std", "precision", "recall", "num_samples", "generate_seconds",
                            "steps_per_image", *CPU_SPEED}
    assert np.array_equal(read(tmp_path / "samples.npz")[0], read(uninterrupted)[0])  # same samples as the verb's
    assert (tmp_path / "eval_samples.png").is_file()


def test_bad_inputs_fail_with_one_clear_error_before_anything_is_written(
        tmp_path, shapes_reference, random_inception_weights, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg, module = tiny_module()
    torch.save(to_official(module.paradigm), tmp_path / "official.pt")
    config = DEMO
    np.savez(tmp_path / "nostats.npz", np.zeros((4, 16, 16, 3), np.uint8))
    base = [*TINY, *tracking_overrides(tmp_path), f"eval.extractor_options.weights_path={random_inception_weights}"]
    cases = [
        ([f"eval.reference={tmp_path / 'missing.npz'}"], "16", "reference batch .* not found"),
        ([f"eval.reference={tmp_path / 'nostats.npz'}"], "16", "lacks mu, sigma, mu_s, sigma_s"),
        ([f"eval.reference={shapes_reference}", f"eval.extractor_options.weights_path={tmp_path / 'no.pth'}"], "16",
         "InceptionV3 weights not found"),
        ([f"eval.reference={shapes_reference}", "data.image_size=32", "data.grid_size=8"], "16",
         "samples are 32x32 but the reference batch .* holds 16x16"),
        ([f"eval.reference={shapes_reference}"], "20", "20 samples cannot be split evenly over 16 classes"),
        ([], "16", "eval.reference is not set"),
        ([f"eval.reference={shapes_reference}", "eval.engine=graph"], "16",
         "eval.engine=graph replays CUDA graphs and needs a GPU"),
    ]
    for extra, n, message in cases:
        code = cli(["evaluate", config, "--ckpt", str(tmp_path / "official.pt"), "--num-samples", n, "--name", "bad",
                    *base, *extra])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, (message, err)
        assert re.search(message, err), (message, err)
        assert not (tmp_path / "runs" / "bad").exists(), message


@pytest.mark.cuda
def test_cuda_samples_do_not_depend_on_the_batch_size(tmp_path):
    """On a GPU the GEMMs of different batch sizes differ in round-off; the codes (and so, with the
    fixed decode batch, the images) must still be the same. bf16 autocast as in real runs, on the
    eager engine (the graph engine's rule fixes the batch size instead: tests/test_generation_engine.py)."""
    cfg, module = tiny_module("trainer.accelerator=gpu", "trainer.precision=bf16-mixed", "eval.engine=eager")
    arrays = [read(generate_samples(module, cfg, 64, tmp_path / f"b{b}.npz", b, sample_settings(cfg, CLASSES)))[0]
              for b in (7, 64)]
    assert np.array_equal(*arrays)


REPORT = """
    import nar_bench.metrics.sample_store as store_module
    import nar_bench.metrics.adm as adm
    import nar_bench.tracking.mlflow as mlflow_module
    write_shard, extract = store_module.SampleStore.write_shard, adm.InceptionFeatures.extract
    add_streamed, reopen = adm.StreamedFeatures.add, mlflow_module.reopen
    def reporting_write_shard(self, shard, *args):
        print("writing shard", shard, flush=True)
        return write_shard(self, shard, *args)
    def reporting_extract(self, batches, total=None, desc="Inception features"):
        print("extracting", desc, flush=True)
        return extract(self, batches, total, desc)
    def reporting_add_streamed(self, images):  # the samples' features, extracted while they are assembled
        if self.extractor is None:  # the first chunk
            print("extracting", "sample features", flush=True)
        return add_streamed(self, images)
    def reporting_reopen(c, run_id, tags):
        print("reopening", run_id, c.get_run(run_id).info.status, flush=True)
        return reopen(c, run_id, tags)
    store_module.SampleStore.write_shard = reporting_write_shard
    adm.InceptionFeatures.extract = reporting_extract
    adm.StreamedFeatures.add = reporting_add_streamed
    mlflow_module.reopen = reporting_reopen
"""
KILL_AT_SECOND_SHARD = REPORT + """
    def killing_write_shard(self, shard, *args):
        if shard == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return reporting_write_shard(self, shard, *args)
    store_module.SampleStore.write_shard = killing_write_shard
"""
KILL_WHILE_SCORING = REPORT + """
    def killing_metrics(*args, **kwargs):  # after the sample features were extracted
        os.kill(os.getpid(), signal.SIGKILL)
    adm.adm_metrics = killing_metrics
"""


def printed(done, prefix: str) -> list[str]:
    """What the hooks printed after ``prefix`` (progress bars share the lines)."""
    return [match.strip() for match in re.findall(rf"{prefix} ([^\r\n]*)", done.stdout)]


@pytest.fixture(scope="module")
def evaluate_argv(tmp_path_factory, shapes_reference, random_inception_weights):
    """(argv without tracking settings, folder of an uninterrupted `nar-bench evaluate` of 32 samples
    in 4 shards)."""
    folder = tmp_path_factory.mktemp("evaluate")
    _, module = tiny_module()
    torch.save(to_official(module.paradigm), folder / "official.pt")
    argv = ["evaluate", DEMO, "--ckpt", str(folder / "official.pt"), "--num-samples", "32", "--name", "tiny", *TINY,
            f"eval.reference={shapes_reference}", f"eval.extractor_options.weights_path={random_inception_weights}"]
    done = run_cli([*argv, *tracking_overrides(folder / "whole")])
    assert done.returncode == 0, done.stderr[-3000:]
    return argv, folder / "whole"


def one_run(folder: Path):
    client = MlflowClient(f"sqlite:///{folder}/mlruns.db")
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    return run


def test_evaluate_sigkilled_mid_shard_resumes_its_shards_in_its_run_to_the_same_npz(evaluate_argv, tmp_path):
    argv, whole = evaluate_argv
    argv = [*argv, *tracking_overrides(tmp_path)]
    killed = run_cli(argv, KILL_AT_SECOND_SHARD)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    folder = tmp_path / "runs" / "tiny"
    assert sorted(p.name for p in folder.rglob("*.npz")) == ["shard_00000.npz"]  # nothing half-written
    killed_run = one_run(tmp_path)
    assert killed_run.info.status == "RUNNING"

    again = run_cli(argv, REPORT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert printed(again, "writing shard") == ["1", "2", "3"]  # shard 0 was not generated again
    assert printed(again, "reopening") == [f"{killed_run.info.run_id} KILLED"]  # marked at the restart, resumed
    assert (folder / "samples.npz").read_bytes() == (whole / "runs" / "tiny" / "samples.npz").read_bytes()
    ours, theirs = (json.loads((f / "eval.json").read_text()) for f in (folder, whole / "runs" / "tiny"))
    assert ours["metrics"] == theirs["metrics"] and ours["mlflow_run_id"] == killed_run.info.run_id
    run = one_run(tmp_path)
    assert run.info.run_id == killed_run.info.run_id and run.info.status == "FINISHED"
    assert run.data.metrics["eval/fid"] == pytest.approx(theirs["metrics"]["fid"])


def test_evaluate_sigkilled_while_scoring_reuses_its_samples_and_their_features(evaluate_argv, tmp_path):
    argv, whole = evaluate_argv
    argv = [*argv, *tracking_overrides(tmp_path)]
    killed = run_cli(argv, KILL_WHILE_SCORING)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert printed(killed, "writing shard") == ["0", "1", "2", "3"]
    folder = tmp_path / "runs" / "tiny"
    assert (folder / "samples.npz").is_file() and not (folder / "eval.json").exists()

    again = run_cli(argv, REPORT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert printed(again, "writing shard") == []  # the complete samples.npz of the same settings is taken
    assert "sample features" not in printed(again, "extracting")  # and so are their features
    ours, theirs = (json.loads((f / "eval.json").read_text()) for f in (folder, whole / "runs" / "tiny"))
    assert ours["metrics"] == theirs["metrics"]
    assert one_run(tmp_path).info.status == "FINISHED"
    # nothing was generated or extracted: no rate is made up for them
    assert "feature_img_s" in theirs["speed"] and "feature_img_s" not in ours["speed"]
    assert "generate_img_s" not in ours["speed"]

    # other settings in the same folder: refused without --overwrite, then generated again, nothing mixed
    refused = run_cli([*argv, "eval.sampling.top_k=4"], REPORT)
    assert refused.returncode == 2 and "refusing to overwrite" in refused.stderr
    other = run_cli([*argv, "--overwrite", "eval.sampling.top_k=4"], REPORT)
    assert other.returncode == 0, other.stderr[-3000:]
    assert printed(other, "writing shard") == ["0", "1", "2", "3"] and "sample features" in printed(other, "extracting")
