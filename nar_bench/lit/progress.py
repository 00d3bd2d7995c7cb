"""A training progress bar in optimizer steps of ``trainer.max_steps`` (nar-bench trains for a step
budget, not epochs): ``train 120/300 steps`` instead of an epoch counter and a per-epoch total."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar with the training bar counting ``global_step`` up to ``max_steps``
    across epochs; validation and predict bars are Lightning's."""

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        total = trainer.max_steps if trainer.max_steps > 0 else None
        if bar.total != total:  # first epoch (or a resumed run): the bar counts steps, not batches
            bar.reset(total=total)
            bar.unit = "step"
            bar.set_description(f"train steps (max_steps={trainer.max_steps})")
        bar.n = trainer.global_step
        bar.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.train_progress_bar is not None and self._should_update(step, self.train_progress_bar.total or 0):
            self.train_progress_bar.n = step
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
            self.train_progress_bar.refresh()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
