"""Compares a 2-process training run with a 1-process run at the same global batch (issue 14).

    python results/multigpu/compare_train.py <folder>   # folder = tracking/output root of the two runs

Expects MLflow runs ``two`` and ``one`` in experiment ``train`` of <folder>/mlruns.db and their run
folders under <folder>/two and <folder>/one (the commands in README.md). Prints the per-step
train/loss of both, the largest loss and weight differences, and the run / checkpoint counts.
"""

import sys
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

import nar_bench  # noqa: F401  (torchvision compatibility before Lightning)

folder = Path(sys.argv[1])
client = MlflowClient(f"sqlite:///{folder}/mlruns.db")
runs = client.search_runs([client.get_experiment_by_name("train").experiment_id])
print("mlflow runs:", sorted(r.info.run_name for r in runs))
by_name = {r.info.run_name: r for r in runs}
curves = {name: [m.value for m in sorted(client.get_metric_history(r.info.run_id, "train/loss"), key=lambda m: m.step)]
          for name, r in by_name.items()}
for name, curve in curves.items():
    print(f"train/loss {name}:", " ".join(f"{v:.7f}" for v in curve))
print("max |train/loss two - one|:", max(abs(a - b) for a, b in zip(curves["two"], curves["one"], strict=True)))
print("val/loss two, one:", by_name["two"].data.metrics["val/loss"], by_name["one"].data.metrics["val/loss"])
ckpts = {name: sorted((folder / name).glob("*/checkpoints/*.ckpt")) for name in ("one", "two")}
print("run folders:", {name: [p.name for p in (folder / name).iterdir()] for name in ckpts})
print("checkpoints:", {name: [str(p.relative_to(folder)) for p in paths] for name, paths in ckpts.items()})
weights = {name: torch.load(paths[0], map_location="cpu", weights_only=False)["state_dict"]
           for name, paths in ckpts.items()}
print("max |weight two - one|:", max((weights["two"][k] - v).abs().max().item() for k, v in weights["one"].items()))
