"""Issue 17 item 5 / issue 18 item 4: every bad input is ONE clear error line (exit status 2)
before anything is trained or written: no run folder, no MLflow store (so no RUNNING run), no
output file."""

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from nar_bench.cli import main
from nar_bench.config import load_config
from nar_bench.lit.module import GeneratorModule
from nar_bench.registry import PARADIGMS
from tests.conftest import tracking_overrides

TINY = ["model.size=tiny", "data.image_size=16", "data.grid_size=4", "data.batch_size=8", "data.num_val=8",
        "trainer.max_steps=2", "trainer.val_check_interval=2", "eval.samples_per_class=1"]
VQ = ["tokenizer.name=vq", "tokenizer.options.preset=synthetic"]  # 64px -> 16x16 codes


def assert_one_clear_error(capsys, tmp_path: Path, message: str) -> None:
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and err.startswith("nar-bench: error: ")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()
    db = tmp_path / "mlruns.db"
    if db.exists():  # a store may exist, but it holds no run left RUNNING
        client = MlflowClient(f"sqlite:///{db}")
        assert not [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
                    if r.info.status == "RUNNING"]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("yaml_text, message", [
    ("data:\n  image_size: [64\nmodel: {paradigm: nar}\n", "is not valid YAML at line"),
    ("- data\n- model\n", "holds a list at its top level; it must be a mapping of sections"),
])
def test_bad_yaml_file(tmp_path, capsys, yaml_text, message):
    config = write(tmp_path, "bad.yaml", yaml_text)
    assert main(["train", str(config), *tracking_overrides(tmp_path)]) == 2
    assert_one_clear_error(capsys, tmp_path, message)


@pytest.mark.parametrize("overrides, message", [
    (["data.grid_size=12"], "data.grid_size 12 does not divide data.image_size 64"),
    (["data.image_size=32"], "data.image_size=32 with data.grid_size 16 (from experiments/demo.yaml) changes the "
                             "token cells from 4 px to 2 px; set data.grid_size too: data.grid_size=8 keeps 4 px"),
    ([*VQ], "tokenizer 'vq' has learned weights but tokenizer.checkpoint is not set"),
    ([*VQ, "tokenizer.untrained=true", "data.grid_size=8"],
     "data.grid_size 8 is ignored by tokenizer 'vq': it makes a 16x16 code grid from 64px images"),
])
def test_bad_geometry_or_tokenizer_fails_before_training(tmp_path, capsys, overrides, message):
    assert main(["train", "experiments/demo.yaml", *overrides, *tracking_overrides(tmp_path)]) == 2
    assert_one_clear_error(capsys, tmp_path, message)


def test_model_checkpoint_that_is_a_text_file(tmp_path, capsys):
    text = write(tmp_path, "weights.pt", "not weights\n")
    assert main(["train", "experiments/demo.yaml", *TINY, f"model.checkpoint={text}",
                 *tracking_overrides(tmp_path)]) == 2
    assert_one_clear_error(capsys, tmp_path, f"model.checkpoint: '{text}' is not a readable PyTorch weights file")


def test_corrupt_inception_weights_fail_a_sweep_before_its_first_point_trains(tmp_path, capsys):
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"\x80\x02" + b"garbage" * 10)
    argv = ["sweep", "experiments/ablation_heads.yaml", "--only", "ntp_raster", "--out", str(tmp_path / "out"), *TINY,
            "eval.extractor=inception", f"eval.extractor_options.weights_path={weights}",
            *tracking_overrides(tmp_path)]
    assert main(argv) == 2
    assert_one_clear_error(capsys, tmp_path, f"sweep point 'ntp_raster': '{weights}' is not a readable PyTorch "
                                             "weights file")


def test_a_bad_last_sweep_point_fails_before_the_first_trains(tmp_path, capsys):
    config = write(tmp_path, "sweep.yaml", "sweep:\n  variants:\n    - {name: fine, overrides: [model.paradigm=ar]}\n"
                                           "    - {name: no_ckpt, overrides: [tokenizer.name=vq]}\n")
    argv = ["sweep", str(config), "--out", str(tmp_path / "out"), *TINY, *tracking_overrides(tmp_path)]
    assert main(argv) == 2
    assert_one_clear_error(capsys, tmp_path, "sweep point 'no_ckpt': tokenizer 'vq' has learned weights")


def test_a_bench_point_with_an_unknown_paradigm_fails_before_any_run(tmp_path, capsys):
    argv = ["bench", "experiments/throughput_sweep.yaml", "bench.points=[{paradigm: ar, size: tiny}, {paradigm: nope}]",
            "bench.device=cpu", "bench.cuda_graph=false", f"bench.output_dir={tmp_path}/out",
            *tracking_overrides(tmp_path)]
    assert main(argv) == 2
    valid = ", ".join(sorted(PARADIGMS))
    assert_one_clear_error(capsys, tmp_path, f"bench point 'nope-B': unknown paradigm 'nope'; choose one of: {valid}")


@pytest.fixture(scope="module")
def lightning_ckpt(tmp_path_factory) -> Path:
    """A Lightning-format checkpoint of an untrained tiny generator (what a run's last.ckpt holds)."""
    module = GeneratorModule(load_config("experiments/demo.yaml", TINY), 16)
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    torch.save({"pytorch-lightning_version": "2.0.0", "state_dict": module.state_dict(),
                "hyper_parameters": dict(module.hparams)}, path)
    return path


@pytest.mark.parametrize("kind, extra, out, message", [
    ("state_dict", [], "out/grid.png", "is not a nar-bench Lightning checkpoint (a plain state dict?)"),
    ("lightning", ["eval.sampling.cfg_scal=3"], "out/grid.png", "bad config key 'eval.sampling.cfg_scal'"),
    ("lightning", ["model.size=B"], "out/grid.png", "sample ignores 'model.size': the checkpoint fixes the model"),
    ("lightning", [], "out/grid", "--out '{tmp}/out/grid': name the image file with one of .png"),
])
def test_bad_sample_input(tmp_path, capsys, lightning_ckpt, kind, extra, out, message):
    ckpt = lightning_ckpt
    if kind == "state_dict":
        ckpt = tmp_path / "weights.pt"
        torch.save(torch.load(lightning_ckpt)["state_dict"], ckpt)
    assert main(["sample", "--ckpt", str(ckpt), "--out", str(tmp_path / out), *extra]) == 2
    assert_one_clear_error(capsys, tmp_path, message.format(tmp=tmp_path))


def test_sample_writes_a_labelled_grid(tmp_path, capsys, lightning_ckpt):
    out = tmp_path / "grid.png"
    assert main(["sample", "--ckpt", str(lightning_ckpt), "--out", str(out), "eval.sampling.cfg_scale=1.0"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out) and out.stat().st_size > 0
