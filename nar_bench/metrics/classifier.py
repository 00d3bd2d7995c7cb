"""Training of the small domain classifiers behind the synthetic-data metrics (the shapes CNN of
``metrics.domain``, the moving-shapes 3D CNN of ``metrics.fvd``): cross-entropy, AdamW with a
one-cycle schedule, seeded without touching the caller's RNG."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset


class ClassifierModule(L.LightningModule):
    def __init__(self, net: nn.Module, lr: float, steps: int):
        super().__init__()
        self.net, self.lr, self.steps = net, lr, steps

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, labels = batch
        loss = F.cross_entropy(self.net(inputs), labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, self.lr, total_steps=self.steps, pct_start=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def fit_classifier(make_net: Callable[[], nn.Module], data: Dataset, steps: int, batch_size: int, lr: float,
                   seed: int) -> nn.Module:
    """``make_net()`` trained for ``steps`` batches of ``data``; returned on the CPU, in eval mode,
    without gradients. The net is built inside the seeded scope, so its init is reproducible too."""
    with torch.random.fork_rng(devices=[]):  # seeds our training without touching the caller's RNG
        torch.manual_seed(seed)
        module = ClassifierModule(make_net(), lr, steps)
        trainer = L.Trainer(max_steps=steps, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                            enable_model_summary=False, enable_progress_bar=False)
        trainer.fit(module, DataLoader(data, batch_size=batch_size, shuffle=True))
    return module.net.cpu().eval().requires_grad_(False)
