"""A training progress bar in optimizer steps of ``trainer.max_steps`` (nar-bench trains for a step
budget, not epochs): ``train 120/300 steps`` instead of an epoch counter and a per-epoch total."""

from __future__ import annotations

from pathlib import Path
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


def duration(seconds: float) -> str:
    """E.g. 75 -> '1m15s', 3700 -> '1h01m'."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def point_line(index: int, total: int, name: str, elapsed_s: float, done: int | None = None) -> str:
    """The line a sweep prints as point ``index`` (1-based) of ``total`` starts: its name, the time
    so far and an ETA from the mean time of the ``done`` points finished (default index - 1), e.g.
    ``point 3/10: nar_dim_heads_mixed/seed=0 (elapsed 4m12s, ETA 9m48s)``."""
    done = index - 1 if done is None else done
    eta = f", ETA {duration(elapsed_s / done * (total - done))}" if done > 0 else ""
    return f"point {index}/{total}: {name} (elapsed {duration(elapsed_s)}{eta})"


def grid_lines(images: int, steps: int) -> tuple[str, str]:
    """What a training prints around its final sample grid, which can take minutes on a large model:
    (before: how many images of how many decoding steps, after: the same with ``{seconds}`` to fill)."""
    what = f"final sample grid: {images} images x {steps} decoding steps"
    return f"{what} ...", f"{what} in {{seconds}}"


def run_folder_line(run_dir: str | Path, run_id: str | None) -> str:
    """The line that ends a training: where its checkpoints and samples are, and its MLflow run."""
    return f"run folder: {run_dir} (checkpoints/last.ckpt, samples.png); MLflow run {run_id or '-'}"
