"""LightningModule that trains a tokenizer (msvq now, the VQ-16 tokenizer later) on images.

Contract: a trainable tokenizer implements ``TrainableTokenizer.training_loss`` -- images in
[-1, 1] (B, 3, H, W) -> (scalar loss to minimise, dict of detached scalars to log). Everything
tokenizer-specific (reconstruction term, codebook / commitment terms, straight-through estimator)
lives in that method; this module only batches, logs and optimises. Batches are ``(images, labels)``
as the image datasets yield them (labels unused).

The Lightning checkpoint stores the tokenizer under the ``tokenizer.`` prefix;
``nar_bench.checkpoints_var.read_state_dict(path, prefix="tokenizer.")`` recovers its own state dict.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import lightning as L
import torch
from torch import Tensor, nn

from nar_bench.errors import NarBenchError


@runtime_checkable
class TrainableTokenizer(Protocol):
    def training_loss(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """images (B, 3, H, W) in [-1, 1] -> (loss, {name: detached scalar})."""


class TokenizerModule(L.LightningModule):
    def __init__(self, tokenizer: nn.Module, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.95),
                 weight_decay: float = 0.0, warmup_steps: int = 0):
        super().__init__()
        if not isinstance(tokenizer, TrainableTokenizer):
            raise NarBenchError(f"tokenizer {type(tokenizer).__name__} is not trainable (it has no training_loss); "
                                "train a learned tokenizer such as 'msvq'")
        self.tokenizer = tokenizer
        self.save_hyperparameters(ignore=["tokenizer"])

    @classmethod
    def from_config(cls, cfg) -> TokenizerModule:
        """Builds ``cfg.tokenizer`` by name and takes lr / betas / weight decay / warm-up from ``cfg.optim``."""
        import nar_bench.tokenizers  # noqa: F401  (registers the tokenizers)
        from nar_bench.registry import TOKENIZERS

        tokenizer = TOKENIZERS[cfg.tokenizer.name].from_config(cfg)
        o = cfg.optim
        return cls(tokenizer, o.lr, tuple(o.betas), o.weight_decay, o.warmup_steps)

    def _step(self, batch, stage: str) -> Tensor:
        images = batch[0]
        loss, logs = self.tokenizer.training_loss(images)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=images.shape[0])
        self.log_dict({f"{stage}/{k}": v for k, v in logs.items()}, batch_size=images.shape[0])
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.AdamW(self.tokenizer.parameters(), lr=h.lr, betas=h.betas, weight_decay=h.weight_decay)
        warmup = max(h.warmup_steps, 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
