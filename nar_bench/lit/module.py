"""GeneratorModule: trains and samples any Paradigm + Tokenizer pair under Lightning."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from nar_bench.checkpoints import load_generator_weights
from nar_bench.images import save_samples, to_uint8
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.paradigms import build_paradigm
from nar_bench.tokenizers import build_tokenizer
from nar_bench.tracking.mlflow import log_artifact


class GeneratorModule(L.LightningModule):
    """Any paradigm (``model.paradigm``) on any tokenizer. The paradigm starts from
    ``model.checkpoint`` when set (official layout or a nar-bench Lightning .ckpt), else from its
    own initialisation; ``load_initial_weights=False`` skips that (``load_from_checkpoint``)."""

    def __init__(self, cfg: DictConfig | dict, num_classes: int, load_initial_weights: bool = True):
        super().__init__()
        cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
        # Stored as a plain dict: logged as MLflow params and enough to rebuild from a .ckpt.
        self.save_hyperparameters({"cfg": OmegaConf.to_container(cfg, resolve=True), "num_classes": num_classes})
        self.cfg = cfg
        self.num_classes = num_classes
        self.tokenizer = build_tokenizer(cfg)
        self.tokenizer.requires_grad_(False)
        self.paradigm = build_paradigm(cfg, self.tokenizer.code_space, num_classes)
        if cfg.model.checkpoint and load_initial_weights:
            load_generator_weights(self.paradigm, cfg.model.checkpoint)
        self.sampling = SamplingConfig(**cfg.eval.sampling)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs) -> GeneratorModule:
        """Lightning's loader; the trained weights come from the .ckpt, so the run's starting
        weights (``model.checkpoint``, maybe a multi-GB file moved since) are not read again."""
        return super().load_from_checkpoint(checkpoint_path, *args, load_initial_weights=False, **kwargs)

    # --- data -> codes ----------------------------------------------------------------------------
    def to_codes(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Batches hold images (float) or pre-extracted codes (integer)."""
        x, labels = batch
        if x.is_floating_point():
            with torch.no_grad():
                x = self.tokenizer.encode(x)
        return x.flatten(1), labels

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self.paradigm.loss(*self.to_codes(batch))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val/loss", self.paradigm.loss(*self.to_codes(batch)), prog_bar=True, sync_dist=True)

    # --- sampling ---------------------------------------------------------------------------------
    def sample_images(self, labels: Tensor, sampling: SamplingConfig | None = None,
                      generator: torch.Generator | None = None) -> Tensor:
        """labels (B,) -> uint8 images (B, 3, H, W) (video tokenizers: (B, 3, T, H, W))."""
        codes = self.paradigm.generate(labels, sampling or self.sampling, generator)
        return to_uint8(self.tokenizer.decode(codes))

    @property
    def grid_columns(self) -> int:
        """Columns of sample grids: one per class, at most 16."""
        return min(self.num_classes, 16)

    def sample_grid_labels(self) -> Tensor:
        """samples_per_class rows of every grid column's class, for the grid artifact."""
        return torch.arange(self.grid_columns, device=self.device).repeat(self.cfg.eval.samples_per_class)

    def sample_grid(self, seed: int, sampling: SamplingConfig | None = None) -> Tensor:
        """uint8 images for ``sample_grid_labels()``, drawn with a generator seeded with ``seed``."""
        generator = torch.Generator(self.device).manual_seed(seed)
        return self.sample_images(self.sample_grid_labels(), sampling, generator)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        images = self.sample_grid(self.cfg.seed)
        with tempfile.TemporaryDirectory() as tmp:
            path = save_samples(images, Path(tmp) / f"samples_step{self.global_step:06d}.png", self.grid_columns)
            log_artifact(self.logger, path, "samples")

    # --- optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.cfg.optim
        # LlamaGen: weight decay on matrices only, not on norms / biases / embeddings' 1-D params
        decay = [p for p in self.paradigm.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.paradigm.parameters() if p.requires_grad and p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr, betas=tuple(o.betas),
        )
        total = max(self.cfg.trainer.max_steps, 1)

        def warmup_cosine(step: int) -> float:  # linear warm-up, cosine decay to 10%
            if step < o.warmup_steps:
                return (step + 1) / o.warmup_steps
            progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
            return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

