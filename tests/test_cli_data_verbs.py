"""`nar-bench train-tokenizer` and `nar-bench extract-codes`: the real-data chain (train a tokenizer,
tokenize the data once, train a generator on the codes) through the command line."""

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from nar_bench.cli import main
from tests.conftest import tracking_overrides

pytestmark = pytest.mark.usefixtures("single_thread")

VQ = ["tokenizer.name=vq", "tokenizer.options.codebook_size=32", "tokenizer.options.code_dim=4",
      "tokenizer.options.ch=8", "tokenizer.options.ch_mult=[1,2]", "tokenizer.options.num_res_blocks=1",
      "tokenizer.options.z_channels=8", "tokenizer.options.norm_groups=4"]
DATA = ["data.image_size=16", "data.grid_size=8", "data.batch_size=8", "data.num_train=32", "data.num_val=8"]
STEPS = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1", "optim.warmup_steps=1"]



def printed_summary(capsys) -> dict[str, str]:
    """The key=value line a verb prints last (Lightning's progress output comes before it)."""
    return dict(item.split("=", 1) for item in capsys.readouterr().out.strip().splitlines()[-1].split())


def test_train_tokenizer_then_extract_codes_then_train_on_the_codes(tmp_path, capsys):
    assert main(["train-tokenizer", "experiments/demo.yaml", *VQ, *DATA, *STEPS, *tracking_overrides(tmp_path)]) == 0
    summary = printed_summary(capsys)
    weights = Path(summary["tokenizer_checkpoint"])
    assert summary["tokenizer"] == "vq" and summary["train_steps"] == "2" and weights.is_file()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    assert client.get_run(summary["mlflow_run_id"]).info.status == "FINISHED"

    codes = tmp_path / "codes"
    argv = ["extract-codes", "experiments/demo.yaml", str(codes), "--shard-size", "16", *VQ, *DATA,
            f"tokenizer.checkpoint={weights}"]
    assert main(argv) == 0
    assert printed_summary(capsys) == {"codes": str(codes), "train": "32", "val": "8", "num_tokens": "64",
                                       "vocab_size": "32", "num_classes": "16"}
    manifest = json.loads((codes / "manifest.json").read_text())
    assert [s["count"] for s in manifest["splits"]["train"]["shards"]] == [16, 16]
    assert manifest["tokenizer"]["checkpoint"] == str(weights.resolve())

    argv = ["train", "experiments/demo.yaml", "data.name=codes", f"data.root={codes}", "tokenizer.name=codes",
            "data.batch_size=8", "model.size=tiny", "eval.samples_per_class=1", *STEPS, *tracking_overrides(tmp_path),
            "tracking.run_name=on-codes"]
    assert main(argv) == 0
    run = client.get_run(printed_summary(capsys)["mlflow_run_id"])
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "train/loss")) == 2
    (ckpt,) = (tmp_path / "runs").glob("on-codes-*/checkpoints/last.ckpt")
    tokenizer = {k for k in torch.load(ckpt)["state_dict"] if k.startswith("tokenizer.")}
    assert "tokenizer.quantize.embedding.weight" in tokenizer  # samples decode through the trained VQ


@pytest.mark.parametrize("argv, message", [
    (["train-tokenizer", "experiments/demo.yaml", *VQ, "tokenizer.checkpoint=/nope/vq.pt"],
     "tokenizer.checkpoint: file '/nope/vq.pt' not found"),
    (["train-tokenizer", "experiments/demo.yaml", "tokenizer.optionz.ch=8"], "bad config key 'tokenizer.optionz'"),
    (["extract-codes", "experiments/demo.yaml", "{tmp}"], "already exists; delete it or choose another"),
    (["extract-codes", "experiments/demo.yaml", "{tmp}/codes", *VQ], "has learned weights but tokenizer.checkpoint"),
    (["extract-codes", "experiments/demo.yaml", "{tmp}/codes", "--shard-size", "0"], "shard_size must be positive"),
])
def test_bad_input_is_one_clear_error(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main([*argv, *tracking_overrides(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "codes").exists() and not (tmp_path / "runs").exists()
