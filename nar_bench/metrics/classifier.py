"""The small domain classifiers behind the synthetic-data metrics (the shapes CNN of
``metrics.domain``, the moving-shapes 3D CNN of ``metrics.fvd``): their specs and cache files, and
their training (cross-entropy, AdamW with a one-cycle schedule, seeded without touching the
caller's RNG)."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from nar_bench.errors import NarBenchError
from nar_bench.metrics.cache import atomic_save

Spec = TypeVar("Spec", bound="ClassifierSpec")


class ClassifierSpec:
    """Base of a classifier spec, a frozen dataclass whose fields determine the trained net: their
    hash (with ``arch_version``, bumped when the architecture changes) names the cache file."""

    arch_version: ClassVar[int] = 1

    def label(self) -> str:
        """Readable start of the cache file name."""
        raise NotImplementedError

    @classmethod
    def from_options(cls: type[Spec], options: dict[str, Any]) -> Spec:
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - valid)
        if unknown:
            raise NarBenchError(f"unknown domain classifier option(s) {unknown}; valid: {', '.join(sorted(valid))}")
        return cls(**options)

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "arch": self.arch_version}, sort_keys=True)
        return f"{self.label()}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def cached_classifier(path: Path, spec: ClassifierSpec, train: Callable[[], nn.Module]) -> Path:
    """``path``, first written (the spec and the weights of ``train()``, atomically) if missing;
    that one-off training says what it is doing (it takes a while before the first metrics)."""
    if not path.is_file():
        steps = getattr(spec, "steps", "?")
        print(f"nar-bench: training the {path.parent.name} feature classifier once ({steps} steps, "
              f"{type(spec).__name__}), for the synthetic-data metrics; cached at {path}", file=sys.stderr)
        start = time.perf_counter()
        atomic_save({"spec": asdict(spec), "state_dict": train().state_dict()}, path)
        print(f"nar-bench: feature classifier trained in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return path


def load_classifier(path: str | Path, spec_type: type[Spec], build: Callable[[Spec], nn.Module]) -> nn.Module:
    """The net in a file written by :func:`cached_classifier` (built from its own spec), in eval mode."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    net = build(spec_type(**saved["spec"]))
    net.load_state_dict(saved["state_dict"])
    return net.eval().requires_grad_(False)


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
