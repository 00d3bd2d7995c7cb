"""DataModule over any registered dataset: images (or pre-extracted codes) and class labels."""

from __future__ import annotations

import lightning as L
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

import nar_bench.data  # noqa: F401  (registers the datasets)
from nar_bench.registry import DATASETS


class GeneratorDataModule(L.LightningDataModule):
    def __init__(self, data: DictConfig):
        super().__init__()
        self.data_cfg = data
        self._splits: dict[str, Dataset] = {}

    def split(self, name: str) -> Dataset:
        if name not in self._splits:
            self._splits[name] = DATASETS[self.data_cfg.name](self.data_cfg, name)
        return self._splits[name]

    @property
    def num_classes(self) -> int:
        return self.split("train").num_classes

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        workers = self.data_cfg.num_workers
        return DataLoader(self.split(name), batch_size=self.data_cfg.batch_size, shuffle=shuffle,
                          drop_last=shuffle, num_workers=workers, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)
