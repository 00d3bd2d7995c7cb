"""DataModule over any registered dataset: images (or pre-extracted codes) and class labels."""

from __future__ import annotations

import lightning as L
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

import nar_bench.data  # noqa: F401  (registers the datasets)
from nar_bench.lit.resumable import StepSampler
from nar_bench.registry import DATASETS


class GeneratorDataModule(L.LightningDataModule):
    """``seed`` orders the training data (``StepSampler``: the same batches at the same steps
    whether a run was resumed or not)."""

    def __init__(self, data: DictConfig, seed: int = 0):
        super().__init__()
        self.data_cfg = data
        self.seed = seed
        self._splits: dict[str, Dataset] = {}

    def split(self, name: str) -> Dataset:
        if name not in self._splits:
            self._splits[name] = DATASETS[self.data_cfg.name](self.data_cfg, name)
        return self._splits[name]

    @property
    def num_classes(self) -> int:
        return self.split("train").num_classes

    def _loader(self, name: str, **kwargs) -> DataLoader:
        workers = self.data_cfg.num_workers
        return DataLoader(self.split(name), batch_size=self.data_cfg.batch_size, num_workers=workers,
                          persistent_workers=workers > 0, **kwargs)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        step, ranks, rank = (trainer.global_step, trainer.world_size, trainer.global_rank) if trainer else (0, 1, 0)
        sampler = StepSampler(len(self.split("train")), self.data_cfg.batch_size, self.seed, step, ranks, rank)
        return self._loader("train", sampler=sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)
