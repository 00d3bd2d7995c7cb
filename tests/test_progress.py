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
