"""Bad input, every verb: ONE `nar-bench: error:` line naming the problem and the fix, exit status 2,
nothing written under the output folder and no MLflow run left RUNNING (issues "Long runs ..." and
"A suite that holds", the bad-input half). Each case is one row; the final assertion is the same
for all (``assert_refused``)."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from nar_bench.cli import main
from nar_bench.config import load_config
from nar_bench.lit.module import GeneratorModule
from nar_bench.metrics.adm import POOL_DIM, SPATIAL_DIM
from tests.conftest import ROOT, run_python, tracking_overrides

pytestmark = pytest.mark.usefixtures("single_thread", "metrics_cache")

DEMO = "experiments/demo.yaml"
GEOMETRY = ["data.image_size=16", "data.grid_size=4"]
TINY = ["model.size=tiny", *GEOMETRY, "data.batch_size=8", "data.num_val=8", "trainer.max_steps=2",
        "trainer.val_check_interval=2", "eval.samples_per_class=1", "trainer.accelerator=cpu", "trainer.devices=1"]
EVAL = ["eval.batch_size=8", "eval.shard_size=8", "eval.decode_batch=4"]


def assert_refused(capsys, tmp_path: Path, argv: list[str], message: str, store: Path | None = None) -> None:
    """``nar-bench <argv>`` exits 2 with exactly one stderr line matching ``message`` (a regex), leaves
    nothing under tmp_path/runs or tmp_path/out and no RUNNING run in the test's store."""
    capsys.readouterr()
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("nar-bench: error: "), err
    assert re.search(message.replace("{tmp}", re.escape(str(tmp_path))), lines[0]), (message, lines[0])
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists(), sorted(tmp_path.rglob("*"))
    db = store or tmp_path / "mlruns.db"
    if db.exists():
        client = MlflowClient(f"sqlite:///{db}")
        running = [r.info.run_id for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
                   if r.info.status == "RUNNING"]
        assert not running, running


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# --- config files and overrides: every verb reads them the same way, so `train` stands for all ---------
@pytest.mark.parametrize("yaml_text, message", [
    ("", r"config file '.*bad.yaml' is empty; give it sections"),
    ("- data\n- model\n", "holds a list at its top level"),
    (b"\xff\xfe\x00data: 1\n", r"cannot read config file '.*bad.yaml'.*utf-8"),
    ("data:\n  batch_size: 8\ndata:\n  batch_size: 9\n", "is not valid YAML at line 3, column 1: found duplicate key"),
    ("data: 5\n", r"bad config key 'data' in .*bad.yaml: data is a section of keys \(name, root, .*\): set one"),
    ("model:\n  options: [1, 2]\n", r"bad config key 'model.options' .*model.options is a section of keys"),
    ("sweep:\n  variants: [a, b]\n", r"bad config key 'sweep.variants' .*sweep.variants is a list of mappings, e.g. "
                                     r"sweep.variants=\[\{name: a, overrides: \[model.paradigm=ar\]\}\]"),
    ("eval:\n  sampling:\n    top_p: 0\n", r"eval.sampling.top_p=0.0 \(from .*bad.yaml\) is out of range: must be a "
                                            r"finite number in \(0, 1\] \(1 = off\), e.g. eval.sampling.top_p=1.0"),
])
def test_a_bad_config_file(tmp_path, capsys, yaml_text, message):
    config = write(tmp_path / "bad.yaml", yaml_text)
    assert_refused(capsys, tmp_path, ["train", str(config), *tracking_overrides(tmp_path)], message)


@pytest.mark.parametrize("config, message", [
    ("{tmp}/missing.yaml", r"config file '{tmp}/missing.yaml' not found; pass a YAML from experiments/"),
    ("{tmp}", r"config file '{tmp}' is a folder; pass a YAML file"),
])
def test_a_config_path_that_is_no_file(tmp_path, capsys, config, message):
    assert_refused(capsys, tmp_path, ["train", config, *tracking_overrides(tmp_path)], message)


@pytest.mark.parametrize("override, message", [
    ("eval.sampling.cfg_scale=nan", r"eval.sampling.cfg_scale=nan \(from command-line overrides\) is out of range: "
                                    r"must be a finite number >= 0 .*, e.g. eval.sampling.cfg_scale=2.0"),
    ("eval.sampling.cfg_scale=inf", r"eval.sampling.cfg_scale=inf .* is out of range"),
    ("eval.sampling.cfg_scale=-1", r"eval.sampling.cfg_scale=-1.0 .* must be a finite number >= 0"),
    ("eval.sampling.temperature=-0.5", r"eval.sampling.temperature=-0.5 .* >= 0 \(0 = greedy\)"),
    ("eval.sampling.top_p=1.5", r"eval.sampling.top_p=1.5 .* in \(0, 1\]"),
    ("eval.sampling.top_k=-1", r"eval.sampling.top_k=-1 .* >= 0 \(0 = off\)"),
    ("data.batch_size=-8", r"data.batch_size=-8 .* must be a finite number > 0, e.g. data.batch_size=64"),
    ("eval.batch_size=0", r"eval.batch_size=0 .* > 0"),
    ("optim.lr=0", r"optim.lr=0.0 .* > 0, e.g. optim.lr=0.001"),
    ("optim.betas=[0.9,1.5]", r"optim.betas=\[0.9,1.5\] .* each value must be a finite number in \[0, 1\)"),
    ("trainer.max_steps=-1", r"trainer.max_steps=-1 .* >= 0"),
    ("eval.num_samples=0", r"eval.num_samples=0 .* > 0"),
    ("eval.shard_size=0", r"eval.shard_size=0 .* > 0"),
    ("eval.decode_batch=-4", r"eval.decode_batch=-4 .* > 0"),
    ("eval.reference_size=1", r"eval.reference_size=1 .* >= 2 \(a covariance needs 2 images\)"),
    ("seed=-1", r"seed=-1 .* in \[0, 4294967295\]"),
    ("model.resid_dropout=1.0", r"model.resid_dropout=1.0 .* in \[0, 1\)"),
    ("trainer.max_stepz=3", r"bad config key 'trainer.max_stepz' in command-line overrides: .*valid keys here: "
                            r".*max_steps"),
    ("eval.metrics=fid", r"eval.metrics is a list: write it in brackets, e.g. eval.metrics=\[fid,isc,kid,prc\]"),
    ("data=5", r"bad config key 'data' .*data is a section of keys"),
    ("model.size=[1,2]", r"bad config key 'model.size'"),
    ("trainer.devices=[", r"override 'trainer.devices=\[' in command-line overrides: its value is not valid YAML"),
    ("trainer.max_steps", r"override 'trainer.max_steps' in command-line overrides is not key=value"),
    ("=5", r"override '=5' .* is not key=value"),
    ("optim.betas=[0.9]", r"bad config key 'optim.betas'.*length 1 does not match"),
    ("bench.points=[nar]", r"bench.points is a list of mappings with keys name, paradigm, size, options, overrides"),
    ("bench.points=[{paradigm: nar, sise: B}]", r"bad config key 'sise' .*Did you mean: 'size'\?$"),
])
def test_a_bad_override(tmp_path, capsys, override, message):
    assert_refused(capsys, tmp_path, ["train", DEMO, *TINY, *tracking_overrides(tmp_path), override], message)


@pytest.mark.parametrize("overrides, message", [
    (["model.paradigm=ar", "model.options.order=spiral"],
     r"model.options.order='spiral' is not an order of paradigm 'ar'; choose one of: raster, zipar$"),
    (["model.paradigm=maskgit", "model.options.order=random"],
     r"model.options.order='random' is not an order of paradigm 'maskgit'; choose one of: confidence, halton$"),
    (["model.paradigm=ar", "model.options.order=zipar", "model.options.zipar_window=5"],
     r"model.options.zipar_window=5 cannot be realised on rows of 4 tokens: it must be between 1 and 4"),
    (["model.paradigm=ar", "model.options.order=zipar", "model.options.zipar_window=0"],
     r"model.options.zipar_window=0 cannot be realised"),
    (["model.paradigm=nar", "model.options.order=zipar"],
     r"model.options.order=zipar is an option of paradigm ar, not of 'nar': set model.paradigm=ar"),
    (["model.paradigm=maskgit", "model.options.zipar_window=2"],
     r"model.options.zipar_window=2 is an option of paradigm ar, not of 'maskgit'"),
    (["model.paradigm=nar", "model.options.order=halton"],
     r"an option of paradigm lpd / maskgit / randar, not of 'nar'"),
    (["model.paradigm=randar", "model.options.order=spiral"],
     r"model.options.order='spiral' is not valid; choose one of: raster, diagonal, random, halton, locality, "
     r"permutation \(permutation: "),
    (["model.paradigm=lpd", "model.options.order=spiral"],
     r"model.options.order='spiral' is not valid; choose one of: raster, diagonal, random, halton, locality$"),
    (["model.paradigm=randar", "model.options.steps=17"],
     r"model.options.steps=17 cannot be realised by RandAR's schedule on 16 tokens: choose 2..16"),
    (["model.paradigm=lpd", "model.options.steps=12"],
     r"model.options.steps=12 cannot be realised by LPD's step table on 16 tokens: choose one of 8, 16"),
    (["model.paradigm=randar", "model.options.order=zipar"],
     r"model.options.order='zipar' is not valid; choose one of: raster, diagonal"),
    (["model.paradigm=lpd", "model.options.zipar_window=4"],
     r"model.options.zipar_window=4 is an option of paradigm ar, not of 'lpd'"),
])
def test_a_decoding_order_that_cannot_be_used(tmp_path, capsys, overrides, message):
    """Issue #31: an order name that does not exist lists the valid ones, a ZipAR window the grid's rows
    cannot realise names the range, an order option on a paradigm without it names the paradigm that has it."""
    assert_refused(capsys, tmp_path, ["train", DEMO, *TINY, *tracking_overrides(tmp_path), *overrides], message)


# --- sweeps: every point is checked before the first one trains ---------------------------------------
@pytest.mark.parametrize("yaml_text, overrides, message", [
    ("sweep:\n  variants:\n    - {name: a, overrides: [model.paradigm=ar]}\n"
     "    - {name: b, overrides: [eval.sampling.cfg_scale=nan]}\n", [],
     r"eval.sampling.cfg_scale=nan \(from sweep point 'b'\) is out of range"),
    ("sweep:\n  variants:\n    - {name: a, overrides: []}\n    - {name: a, overrides: [model.paradigm=ar]}\n", [],
     "sweep.variants: the name a is used twice"),
    ("sweep:\n  variants:\n    - {name: a, overrides: [model.sise=B]}\n", [],
     r"bad config key 'model.sise' in sweep variant 'a'"),
    ("sweep:\n  variants:\n    - {name: a, overrides: [model.paradigm=ar]}\n", ["sweep.seeds=[0,-1]"],
     r"sweep.seeds=\[0,-1\] .* each value must be a finite number in \[0, 4294967295\]"),
])
def test_a_bad_sweep(tmp_path, capsys, yaml_text, overrides, message):
    config = write(tmp_path / "sweep.yaml", yaml_text)
    argv = ["sweep", str(config), "--out", "{tmp}/out", *TINY, *tracking_overrides(tmp_path), *overrides]
    assert_refused(capsys, tmp_path, argv, message)


def test_a_bench_with_a_zero_batch_size_or_an_unwritable_out(tmp_path, capsys):
    base = ["bench", "experiments/throughput_sweep.yaml", "bench.device=cpu", *tracking_overrides(tmp_path)]
    assert_refused(capsys, tmp_path, [*base, "bench.batch_sizes=[1,0]", "--out", "{tmp}/out"],
                   r"bench.batch_sizes=\[1,0\] .* each value must be a finite number > 0")
    write(tmp_path / "afile", "a file where a folder should be\n")
    assert_refused(capsys, tmp_path, [*base, "bench.points=[{paradigm: ar, size: tiny}]", "bench.batch_sizes=[1]",
                                      "--out", "{tmp}/afile/out"],
                   r"cannot write '{tmp}/afile/out': '{tmp}/afile' is a file, not a folder; choose another --out")


# --- I/O faults -------------------------------------------------------------------------------------
def test_a_read_only_mlflow_store_is_one_line_and_leaves_no_run(tmp_path, capsys, monkeypatch):
    db = tmp_path / "mlruns.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # an existing store, then opened read-only by SQLite
    read_only = f"tracking.tracking_uri=sqlite:///file:{db}?mode=ro&uri=true"
    # MLflow makes the "parent folder" of SQLite's URI form relative to the working directory
    # (file:/tmp/...): in tmp_path, not in the checkout
    monkeypatch.chdir(tmp_path)
    argv = ["train", str(ROOT / DEMO), *TINY, *tracking_overrides(tmp_path), read_only]
    assert_refused(capsys, tmp_path, argv, r"the MLflow store sqlite:///file:.*mlruns.db\?mode=ro&uri=true cannot "
                                           r"be written \(.*attempt to write a readonly database\); make it writable")


@pytest.mark.parametrize("override, message", [
    ("output_dir={tmp}/afile/runs", r"cannot write '{tmp}/afile/runs': '{tmp}/afile' is a file, not a folder; "
                                    "choose another output_dir"),
    ("tracking.artifact_location={tmp}/afile/art", r"cannot write '{tmp}/afile/art': .* choose another "
                                                   "tracking.artifact_location"),
    ("tracking.tracking_uri=sqlite:///{tmp}/afile/mlruns.db", r"cannot create the MLflow store "
                                                              r"'{tmp}/afile/mlruns.db': .*tracking.tracking_uri"),
])
def test_an_unwritable_place_fails_before_training(tmp_path, capsys, override, message):
    write(tmp_path / "afile", "a file where a folder should be\n")
    assert_refused(capsys, tmp_path, ["train", DEMO, *TINY, *tracking_overrides(tmp_path), override], message)


def image_folder(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 2) -> Path:
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(root / cls / f"{i}.png")
    return root


@pytest.mark.parametrize("bad_file, message", [
    ("b/2.png", r"cannot read image '{tmp}/photos/b/2.png' \(cannot identify image file\); delete or replace the "
                "file"),
    ("a/notes.jpg", r"cannot read image '{tmp}/photos/a/notes.jpg' \(cannot identify image file\)"),
])
def test_a_non_image_in_an_image_folder_fails_before_training(tmp_path, capsys, bad_file, message):
    photos = image_folder(tmp_path / "photos")
    write(photos / bad_file, "not an image\n")
    write(photos / "a" / "README.txt", "ignored: not an image extension\n")
    argv = ["train", DEMO, *TINY, "data.name=imagefolder", f"data.root={photos}", "data.num_val=2",
            *tracking_overrides(tmp_path)]
    assert_refused(capsys, tmp_path, argv, message)


# --- checkpoints, evaluate, sample, reference -----------------------------------------------------------
@pytest.fixture(scope="module")
def run_ckpt(tmp_path_factory) -> Path:
    """The Lightning checkpoint of an untrained tiny NAR on 16px shapes (what a run's last.ckpt holds)."""
    cfg = load_config(DEMO, TINY)
    module = GeneratorModule(cfg, 16)
    path = tmp_path_factory.mktemp("run") / "last.ckpt"
    torch.save({"pytorch-lightning_version": "2.0.0", "state_dict": module.state_dict(),
                "hyper_parameters": dict(module.hparams)}, path)
    return path


def other_weights(ckpt: Path, path: Path) -> Path:
    """A copy of the run checkpoint ``ckpt`` with other weights: another run's last.ckpt."""
    content = torch.load(ckpt)
    content["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in content["state_dict"].items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(content, path)
    return path


def write_reference(path: Path, size: int, nan: bool = False) -> Path:
    """An ADM-format reference batch (images + mu/sigma + mu_s/sigma_s), statistics made up."""
    mu = np.zeros(POOL_DIM, np.float32)
    if nan:
        mu[3] = np.nan
    np.savez(path, arr_0=np.zeros((4, size, size, 3), np.uint8), mu=mu, sigma=np.eye(POOL_DIM, dtype=np.float32),
             mu_s=np.zeros(SPATIAL_DIM, np.float32), sigma_s=np.eye(SPATIAL_DIM, dtype=np.float32))
    return path


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("refs")
    corrupt = write(folder / "corrupt.npz", b"PK\x03\x04" + bytes(range(256)) * 8)
    return {"ref16": write_reference(folder / "ref16.npz", 16), "ref32": write_reference(folder / "ref32.npz", 32),
            "nan": write_reference(folder / "nan.npz", 16, nan=True), "corrupt": corrupt}


def evaluate_argv(tmp_path, ckpt, *extra: str, config: str = DEMO, weights: Path | None = None) -> list[str]:
    inception = [f"eval.extractor_options.weights_path={weights}"] if weights else []
    return ["evaluate", config, "--ckpt", str(ckpt), "--num-samples", "16", *EVAL, *inception,
            *tracking_overrides(tmp_path), *extra]


@pytest.mark.parametrize("extra, message", [
    (["model.size=tiny", "model.paradigm=ar", *GEOMETRY],
     r"checkpoint '.*last.ckpt' records model.paradigm=nar, but the config says model.paradigm=ar \(command-line "
     r"overrides\); the checkpoint fixes these: pass model.paradigm=nar to match it"),
    (["model.size=tiny"], r"records data.image_size=16, data.grid_size=4, but the config says data.image_size=64 "
                          r"\(experiments/demo.yaml\), data.grid_size=16 \(experiments/demo.yaml\); .*pass "
                          r"data.image_size=16 data.grid_size=4"),
    (["model.size=tiny", *GEOMETRY, "--num-classes", "10"], r"records 16 classes, but the config says --num-classes "
                                                            r"10; .*pass --num-classes 16"),
    (["model.size=tiny", *GEOMETRY, "model.options.heads=single"], r"records model.options.heads=dimension"),
    # NAR has no decode-only option: every option of its checkpoint is fixed
    (["model.size=tiny", *GEOMETRY, "model.options.overlap_head=vertical"],
     r"records model.options.overlap_head=mixed, but the config says model.options.overlap_head=vertical"),
])
def test_evaluate_a_checkpoint_with_a_config_that_contradicts_it(tmp_path, capsys, run_ckpt, references, extra,
                                                                 message):
    argv = evaluate_argv(tmp_path, run_ckpt, f"eval.reference={references['ref16']}", *extra)
    assert_refused(capsys, tmp_path, argv, message)


def test_bad_checkpoint_files(tmp_path, capsys, run_ckpt, references):
    ref = f"eval.reference={references['ref16']}"
    truncated = write(tmp_path / "ckpts" / "truncated.ckpt", run_ckpt.read_bytes()[: run_ckpt.stat().st_size // 2])
    foreign = tmp_path / "ckpts" / "foreign.ckpt"  # another program's Lightning checkpoint
    torch.save({"pytorch-lightning_version": "2.1.0", "state_dict": {"layer.weight": torch.zeros(2, 2)},
                "hyper_parameters": {"lr": 0.1}}, foreign)
    text = write(tmp_path / "ckpts" / "notes.ckpt", "not a checkpoint\n")
    cases = [
        (truncated, r"'.*truncated.ckpt' is not a readable PyTorch weights file \(corrupt or truncated\?\)"),
        (foreign, r"'.*foreign.ckpt' is not a nar-bench Lightning checkpoint \(a plain state dict\?\): it holds no "
                  r"run config"),
        (text, r"'.*notes.ckpt' is not a readable PyTorch weights file"),
        (tmp_path / "ckpts", r"checkpoint '.*ckpts' is a folder; pass the checkpoint file"),
        (tmp_path / "ckpts" / "missing.ckpt", r"checkpoint '.*missing.ckpt' not found"),
    ]
    for ckpt, message in cases:
        assert_refused(capsys, tmp_path, evaluate_argv(tmp_path, ckpt, "model.size=tiny", *GEOMETRY, ref), message)
    # sample reads a checkpoint the same way
    assert_refused(capsys, tmp_path, ["sample", "--ckpt", str(truncated), "--out", "{tmp}/out/grid.png"],
                   r"is not a readable PyTorch weights file \(corrupt or truncated\?\)")
    assert_refused(capsys, tmp_path, ["sample", "--ckpt", str(tmp_path / "ckpts"), "--out", "{tmp}/out/grid.png"],
                   r"is a folder; pass the checkpoint file")


@pytest.mark.parametrize("reference, extra, message", [
    ("corrupt", [], r"reference batch '.*corrupt.npz' is not a readable .npz"),
    ("nan", [], r"reference batch '.*nan.npz': mu/sigma hold NaN or infinite values \(mu\); .*rebuild it"),
    ("ref32", [], r"samples are 16x16 but the reference batch '.*ref32.npz' holds 32x32 images"),
    ("ref16", ["--num-samples", "0"], r"--num-samples 0: evaluate at least one sample per class"),
    ("ref16", ["--num-samples", "20"], r"20 samples cannot be split evenly over 16 classes"),
    ("ref16", ["--out", "{tmp}/afile/samples.npz"], r"cannot write '{tmp}/afile/samples.npz': '{tmp}/afile' is a "
                                                    "file, not a folder"),
])
def test_evaluate_bad_reference_or_samples(tmp_path, capsys, run_ckpt, references, random_inception_weights,
                                           reference, extra, message):
    write(tmp_path / "afile", "a file where a folder should be\n")
    # a config that does not name the model or the geometry: the checkpoint's (16 px) are used
    config = write(tmp_path / "eval.yaml", "eval:\n  samples_per_class: 1\n")
    argv = evaluate_argv(tmp_path, run_ckpt, f"eval.reference={references[reference]}", config=str(config),
                         weights=random_inception_weights)
    assert_refused(capsys, tmp_path, [*argv, *extra], message)


def test_sample_bad_input(tmp_path, capsys, run_ckpt):
    write(tmp_path / "afile", "a file where a folder should be\n")
    base = ["sample", "--ckpt", str(run_ckpt)]
    assert_refused(capsys, tmp_path, [*base, "--out", "{tmp}/out/grid.png", "eval.sampling.cfg_scale=nan"],
                   r"eval.sampling.cfg_scale=nan \(from command-line overrides\) is out of range")
    assert_refused(capsys, tmp_path, [*base, "--out", "{tmp}/out/grid.png", "eval.sampling.top_p"],
                   r"override 'eval.sampling.top_p' is not key=value")
    assert_refused(capsys, tmp_path, [*base, "--out", "{tmp}/afile/grid.png"],
                   r"cannot write '{tmp}/afile/grid.png': '{tmp}/afile' is a file, not a folder")


def test_reference_bad_input(tmp_path, capsys):
    existing = write(tmp_path / "ref.npz", b"an earlier reference\n")
    folder = image_folder(tmp_path / "photos", per_class=1)
    base = ["reference", str(folder), "--image-size", "16"]
    assert_refused(capsys, tmp_path, [*base, "--out", str(existing)],
                   r"refusing to overwrite: '.*ref.npz' exists; choose another --out or pass --overwrite")
    assert existing.read_bytes() == b"an earlier reference\n"
    assert_refused(capsys, tmp_path, [*base, "--out", "{tmp}/out/ref.png"],
                   r"--out '{tmp}/out/ref.png': name the reference batch file with .npz")
    assert_refused(capsys, tmp_path, [*base, "--out", "{tmp}/out/ref.npz", "--num-images", "1"],
                   r"at least 2 images")
    assert_refused(capsys, tmp_path, ["reference", DEMO, "--out", "{tmp}/out/ref.npz", "data.num_val=0"],
                   r"data.num_val=0 \(from command-line overrides\) is out of range")
    assert_refused(capsys, tmp_path, ["reference", "{tmp}/nowhere", "--out", "{tmp}/out/ref.npz"],
                   r"reference source '{tmp}/nowhere' is neither an image folder nor a config YAML")


def test_evaluate_folders_are_keyed_by_checkpoint_and_settings(tmp_path, capsys, run_ckpt, references,
                                                               random_inception_weights):
    """Two checkpoints both named last.ckpt get their own default folders; a folder holding another
    evaluation is refused without --overwrite; settings the config leaves unset come from the
    checkpoint and are recorded."""
    other = other_weights(run_ckpt, tmp_path / "other" / "last.ckpt")
    config = write(tmp_path / "eval.yaml", "eval:\n  samples_per_class: 1\n")  # names no model, no geometry
    ref = f"eval.reference={references['ref16']}"
    folders = []
    for ckpt in (run_ckpt, other):
        before = set((tmp_path / "runs").glob("*")) if (tmp_path / "runs").exists() else set()
        assert main(evaluate_argv(tmp_path, ckpt, ref, config=str(config), weights=random_inception_weights)) == 0
        (folder,) = set((tmp_path / "runs").glob("*")) - before
        record = json.loads((folder / "eval.json").read_text())
        assert record["settings"]["paradigm"] == "nar" and record["num_samples"] == 16  # the checkpoint's model
        assert folder.name.startswith(f"eval-nar-last-{record['checkpoint']['sha256'][:8]}-")
        folders.append(folder)
    assert folders[0] != folders[1]
    first = json.loads((folders[0] / "eval.json").read_text())
    capsys.readouterr()
    argv = evaluate_argv(tmp_path, other, ref, "--name", folders[0].name, config=str(config),
                         weights=random_inception_weights)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    refused = r"refusing to overwrite: '.*' holds the evaluation of another checkpoint or other settings " \
              r"\(differing: checkpoint_sha256\); choose another --name"
    assert len(err) == 1 and re.search(refused, err[0]), err
    assert json.loads((folders[0] / "eval.json").read_text()) == first  # untouched
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}  # the refused one opened none
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads((folders[0] / "eval.json").read_text())["checkpoint"]["sha256"] != first["checkpoint"]["sha256"]


# --- a typo fails before torch is imported ------------------------------------------------------------
TYPO_CHILD = """
import sys
from nar_bench.cli import main

for argv in sys.argv[1:]:
    print(main(argv.split("|")))
print("torch imported:", "torch" in sys.modules, "lightning imported:", "lightning" in sys.modules,
      "mlflow imported:", "mlflow" in sys.modules)
"""


def test_a_config_typo_fails_before_torch_lightning_or_mlflow_is_imported(tmp_path):
    typo = "trainer.max_stepz=3"
    cases = {
        "train": ["train", DEMO, typo],
        "sweep": ["sweep", "experiments/ablation_heads.yaml", "--out", f"{tmp_path}/out", typo],
        "bench": ["bench", "experiments/throughput_sweep.yaml", "bench.batch_sizes=[0]"],
        "evaluate": ["evaluate", DEMO, "--ckpt", "last.ckpt", "eval.sampling.top_p=0"],
        "report": ["report", DEMO, "tracking.experimnt=x"],
        "extract-codes": ["extract-codes", DEMO, f"{tmp_path}/codes", "data.batch_size=0"],
        "train-tokenizer": ["train-tokenizer", DEMO, typo],
        "reference": ["reference", DEMO, "--out", f"{tmp_path}/out/ref.npz", typo],
        "order-gifs": ["order-gifs", "--out", f"{tmp_path}/out", typo],
        "sample": ["sample", "--ckpt", "last.ckpt", "eval.sampling.cfg_scal=3"],
    }
    script = write(tmp_path / "typo.py", TYPO_CHILD)
    done = run_python([str(script), *("|".join(argv) for argv in cases.values())],
                      {**os.environ, "PYTHONPATH": str(ROOT)})  # this checkout's nar_bench, not an installed one
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[: len(cases)] == ["2"] * len(cases), done.stdout
    assert "torch imported: False lightning imported: False mlflow imported: False" in done.stdout, done.stdout
    errors = done.stderr.strip().splitlines()
    assert len(errors) == len(cases) and all(e.startswith("nar-bench: error: ") for e in errors), done.stderr
    for (verb, _), error in zip(cases.items(), errors, strict=True):
        assert re.search(r"bad config key|out of range", error), (verb, error)
    assert not (tmp_path / "out").exists() and not (tmp_path / "codes").exists()


def test_order_gifs_checks_every_model_before_the_first_gif(tmp_path, capsys, run_ckpt):
    text = write(tmp_path / "notes.ckpt", "not a checkpoint\n")
    base = ["order-gifs", "--out", "{tmp}/out", "--config", DEMO, *TINY]
    assert_refused(capsys, tmp_path, [*base, "--paradigms", "ar", "nope"], r"unknown paradigm 'nope'; choose one of: ")
    assert_refused(capsys, tmp_path, [*base, "--paradigms", "ar", "nar", "--label", "16"],
                   r"--label 16: the ar model has classes 0..15")
    assert_refused(capsys, tmp_path, [*base, "--paradigms", "ar", "nar", "--ckpt", f"nar={text}"],
                   r"'.*notes.ckpt' is not a readable PyTorch weights file")
    assert_refused(capsys, tmp_path, [*base, "--paradigms", "ar", "--ckpt", f"nar={run_ckpt}"],
                   r"--ckpt nar=...: 'nar' is not among --paradigms ar")


def test_extract_codes_into_an_unwritable_place(tmp_path, capsys):
    write(tmp_path / "afile", "a file where a folder should be\n")
    assert_refused(capsys, tmp_path, ["extract-codes", DEMO, "{tmp}/afile/codes"],
                   r"cannot write '{tmp}/afile/codes': '{tmp}/afile' is a file, not a folder; choose another out_dir")


def test_a_checkpoint_whose_weights_do_not_fit_its_own_config(tmp_path, capsys, run_ckpt, references,
                                                              random_inception_weights):
    content = torch.load(run_ckpt)
    content["hyper_parameters"]["cfg"]["model"]["n_layers"] = 3  # edited by hand, or another version's model
    edited = tmp_path / "ckpts" / "edited.ckpt"
    edited.parent.mkdir()
    torch.save(content, edited)
    argv = evaluate_argv(tmp_path, edited, "model.size=tiny", *GEOMETRY, f"eval.reference={references['ref16']}",
                         weights=random_inception_weights)
    assert_refused(capsys, tmp_path, argv, r"checkpoint '.*edited.ckpt' does not fit the model its own config "
                                           r"describes")
    assert_refused(capsys, tmp_path, ["sample", "--ckpt", str(edited), "--out", "{tmp}/out/grid.png"],
                   r"checkpoint '.*edited.ckpt' does not fit the model its own config describes \(.*\); was it "
                   r"written by another nar-bench version\?")


def test_train_zero_steps_without_a_checkpoint(tmp_path, capsys):
    assert_refused(capsys, tmp_path, ["train", DEMO, *TINY, "trainer.max_steps=0", *tracking_overrides(tmp_path)],
                   r"trainer.max_steps=0 trains nothing and model.checkpoint is not set")


def test_sample_files_are_keyed_by_checkpoint_and_an_existing_out_is_refused(tmp_path, capsys, run_ckpt,
                                                                           monkeypatch):
    other = other_weights(run_ckpt, tmp_path / "other" / "last.ckpt")
    monkeypatch.chdir(tmp_path)  # the default folder, results/runs/samples/, is relative
    for ckpt in (run_ckpt, other):
        assert main(["sample", "--ckpt", str(ckpt), "eval.sampling.cfg_scale=1.0"]) == 0
    written = sorted((tmp_path / "results" / "runs" / "samples").iterdir())
    assert len(written) == 2 and all(re.fullmatch(r"nar-last-[0-9a-f]{8}-[0-9a-f]{8}\.png", p.name) for p in written)
    before = written[0].read_bytes()
    assert_refused(capsys, tmp_path, ["sample", "--ckpt", str(other), "--out", str(written[0])],
                   r"refusing to overwrite: '.*\.png' exists; choose another --out, leave --out out")
    assert written[0].read_bytes() == before
    assert main(["sample", "--ckpt", str(other), "--out", str(written[0]), "--overwrite"]) == 0


def test_an_image_truncated_past_its_header_is_one_line_naming_it_from_a_loader_worker(tmp_path, capsys):
    """A file whose header opens but whose pixels are cut off passes the scan; loading it in a
    DataLoader worker (whose error comes back wrapped in the worker's traceback) is still one line
    naming the file, and the training run ends FAILED, not RUNNING."""
    photos = image_folder(tmp_path / "photos", per_class=4)
    whole = (photos / "b" / "3.png").read_bytes()
    (photos / "b" / "3.png").write_bytes(whole[: len(whole) // 2])
    argv = ["train", DEMO, *TINY, "data.name=imagefolder", f"data.root={photos}", "data.num_val=2",
            "data.batch_size=8", "data.num_workers=1", *tracking_overrides(tmp_path)]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        f"nar-bench: error: cannot read image '{photos / 'b' / '3.png'}'"), err[-2000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert run.info.status == "FAILED"


def test_a_full_mlflow_store_is_one_line_and_leaves_no_run(tmp_path, capsys, monkeypatch):
    """SQLite's error for a full disk, raised where MLflow creates the run (a store cannot be filled
    on purpose in a test)."""
    from mlflow.exceptions import MlflowException

    def full(*args, **kwargs):
        raise MlflowException("(sqlite3.OperationalError) database or disk is full")

    MlflowClient(f"sqlite:///{tmp_path}/mlruns.db").search_experiments()  # the store exists; it filled up since
    monkeypatch.setattr(MlflowClient, "create_run", full)
    assert_refused(capsys, tmp_path, ["train", DEMO, *TINY, *tracking_overrides(tmp_path)],
                   r"the MLflow store sqlite:///.*mlruns.db cannot be written \(\(sqlite3.OperationalError\) database "
                   r"or disk is full\); make it writable and give its disk space")


def test_a_disk_that_fills_up_while_sampling_is_one_line_and_the_run_ends_failed(
        tmp_path, capsys, monkeypatch, run_ckpt, references, random_inception_weights):
    from nar_bench.metrics.sample_store import SampleStore

    def full(self, shard, images, labels):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.shard_path(shard)))

    monkeypatch.setattr(SampleStore, "write_shard", full)
    config = write(tmp_path / "eval.yaml", "eval:\n  samples_per_class: 1\n")
    argv = evaluate_argv(tmp_path, run_ckpt, f"eval.reference={references['ref16']}", config=str(config),
                         weights=random_inception_weights)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.fullmatch(
        r"nar-bench: error: cannot write '.*samples.npz.shards/shard_00000.npz': No space left on device; free space "
        r"or make it writable, or write elsewhere \(--out, output_dir\)", err.strip().splitlines()[-1]), err[-2000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert run.info.status == "FAILED"
