"""The training bar counts optimizer steps of max_steps across epochs (not ``Epoch 0/-2``)."""

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from nar_bench.lit.progress import StepProgressBar


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_bar_counts_steps_of_max_steps_across_epochs(tmp_path, capsys):
    bar = StepProgressBar()
    seen = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, *_):
            seen.append((bar.train_progress_bar.n, bar.train_progress_bar.total))

    trainer = L.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[bar, Watch()], default_root_dir=tmp_path)
    trainer.fit(Tiny(), DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2))  # 2 steps per epoch
    assert trainer.current_epoch >= 2  # the budget spans epochs
    assert seen == [(step, 5) for step in range(1, 6)]
    printed = capsys.readouterr().out  # Lightning writes its bars to stdout
    assert "train steps (max_steps=5): 100%" in printed and "5/5" in printed and "Epoch" not in printed


def test_one_off_classifier_training_says_what_it_is_doing(tmp_path, capsys):
    from nar_bench.metrics.classifier import cached_classifier
    from nar_bench.metrics.domain import DomainClassifierSpec

    path = tmp_path / "domain" / "spec.pt"
    cached_classifier(path, DomainClassifierSpec(steps=3), lambda: torch.nn.Linear(1, 1))
    err = capsys.readouterr().err
    assert "training the domain feature classifier once (3 steps, DomainClassifierSpec)" in err and str(path) in err
    cached_classifier(path, DomainClassifierSpec(steps=3), lambda: torch.nn.Linear(1, 1))
    assert capsys.readouterr().err == ""  # cached: nothing to say


def test_sweep_point_line_and_eta():
    from nar_bench.lit.progress import point_line, run_folder_line

    assert point_line(1, 4, "ntp_raster", 0.0) == "point 1/4: ntp_raster (elapsed 0s)"
    assert point_line(3, 4, "nar/seed=1", 120.0) == "point 3/4: nar/seed=1 (elapsed 2m00s, ETA 2m00s)"
    assert run_folder_line("results/runs/x-1234", "1234abcd").startswith("run folder: results/runs/x-1234 (")
