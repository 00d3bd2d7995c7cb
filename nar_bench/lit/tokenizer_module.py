"""TokenizerModule: trains any tokenizer that defines ``training_loss`` under Lightning.

Contract for a trainable tokenizer (vq, msvq): ``training_loss(images (B, 3, H, W) in [-1, 1]) ->
(loss scalar, {name: detached scalar})``; the module logs the loss and every entry as
``train/<name>`` / ``val/<name>``. Batches come from any image DataModule as (images, labels).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from nar_bench.errors import NarBenchError
from nar_bench.images import save_grid, to_uint8
from nar_bench.tokenizers import build_tokenizer
from nar_bench.tracking.mlflow import log_artifact

SHOWN_IMAGES = 8  # originals over reconstructions in the validation artifact


class TokenizerModule(L.LightningModule):
    def __init__(self, cfg: DictConfig | dict):
        super().__init__()
        cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
        self.save_hyperparameters({"cfg": OmegaConf.to_container(cfg, resolve=True)})
        self.cfg = cfg
        self.tokenizer = build_tokenizer(cfg)
        if not hasattr(self.tokenizer, "training_loss"):
            raise NarBenchError(f"tokenizer '{cfg.tokenizer.name}' is not trainable (no training_loss); "
                                "choose a learned tokenizer such as vq or msvq")
        self._shown: Tensor | None = None

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, logs = self.tokenizer.training_loss(batch[0])
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in logs.items()})
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, logs = self.tokenizer.training_loss(batch[0])
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log_dict({f"val/{k}": v for k, v in logs.items()}, sync_dist=True)
        if batch_idx == 0:
            self._shown = batch[0][:SHOWN_IMAGES]

    def reconstruct(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> decode(encode(images)), same shape."""
        return self.tokenizer.decode(self.tokenizer.encode(images))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self.trainer.is_global_zero or self._shown is None:
            return
        images = torch.cat([self._shown, self.reconstruct(self._shown)])
        with tempfile.TemporaryDirectory() as tmp:
            path = save_grid(to_uint8(images), Path(tmp) / f"reconstructions_step{self.global_step:06d}.png",
                             nrow=len(self._shown))
            log_artifact(self.logger, path, "reconstructions")

    def configure_optimizers(self):
        # LlamaGen trains its VQ with plain Adam (no weight decay) at a constant rate; the warm-up is ours.
        o = self.cfg.optim
        opt = torch.optim.Adam(self.tokenizer.parameters(), lr=o.lr, betas=tuple(o.betas))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / max(1, o.warmup_steps)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
