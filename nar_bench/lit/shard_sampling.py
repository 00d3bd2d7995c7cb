"""Class-balanced sampling into a ``SampleStore`` through ``Trainer.predict``: the same images for
any batch size and any number of devices.

Work is split by shard (a fixed range of sample indices), not by batch: under DDP each rank
generates whole shards (Lightning's predict sampler hands every shard to one rank) and writes them
itself, so nothing is gathered. Sample i has label ``i % num_classes`` and draws its noise from
``RowNoise.for_samples(seed, i)``; codes are decoded in fixed-size chunks (the last one padded),
so the decoder also sees the same batches whatever the generation batch size or rank count.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from nar_bench.errors import NarBenchError
from nar_bench.images import to_uint8
from nar_bench.metrics.adm_npz import LABELS_KEY, iter_samples
from nar_bench.metrics.sample_store import SampleStore, write_pngs
from nar_bench.nn.noise import RowNoise
from nar_bench.nn.sampling import SamplingConfig


def class_balanced_labels(num_samples: int, num_classes: int) -> Tensor:
    """(num_samples,) labels i % num_classes: exactly num_samples / num_classes per class, in a fixed order."""
    if num_samples % num_classes:
        raise NarBenchError(f"{num_samples} samples cannot be split evenly over {num_classes} classes; choose a "
                            f"multiple of {num_classes} (e.g. {num_classes * max(1, num_samples // num_classes)})")
    return torch.arange(num_samples) % num_classes


class ShardSampler(L.LightningModule):
    """Predict-only: batch = one shard id; generates that shard's samples and writes the shard.

    module: a GeneratorModule (``paradigm`` + ``tokenizer``); ``batch_size`` samples per generate
    call, ``decode_batch`` codes per tokenizer.decode call."""

    def __init__(self, module: L.LightningModule, store: SampleStore, sampling: SamplingConfig, seed: int,
                 num_classes: int, batch_size: int, decode_batch: int = 32, png_dir: str | Path | None = None):
        super().__init__()
        self.module, self.store, self.sampling, self.seed = module, store, sampling, seed
        self.num_classes, self.batch_size, self.decode_batch = num_classes, batch_size, decode_batch
        self.png_dir = png_dir

    @torch.inference_mode()
    def shard_images(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        """(images (n, H, W, 3) uint8, labels (n,)) of shard ``shard``; a video tokenizer's clips are
        stored frames first, (n, T, H, W, 3)."""
        index = torch.tensor(self.store.indices(shard), device=self.device)
        labels = index % self.num_classes
        codes = torch.cat([
            self.module.paradigm.generate(labels[s:s + self.batch_size], self.sampling,
                                          RowNoise.for_samples(self.seed, index[s:s + self.batch_size]))
            for s in range(0, len(index), self.batch_size)])
        images = []
        for s in range(0, len(codes), self.decode_batch):
            chunk = codes[s:s + self.decode_batch]
            pad = self.decode_batch - len(chunk)  # same decoder batch shape for every chunk
            padded = torch.cat([chunk, chunk[:1].expand(pad, *chunk.shape[1:])]) if pad else chunk
            images.append(to_uint8(self.module.tokenizer.decode(padded))[: len(chunk)])
        images = torch.cat(images)
        channels_last = (0, 2, 3, 1) if images.dim() == 4 else (0, 2, 3, 4, 1)  # (n, 3, [T,] H, W)
        return images.permute(*channels_last).cpu().numpy(), labels.cpu().numpy()

    def predict_step(self, batch: Tensor, batch_idx: int) -> None:
        for shard in batch.tolist():
            if shard < 0:  # padding: a rank with no shard of its own
                continue
            images, labels = self.shard_images(shard)
            self.store.write_shard(shard, images, labels)
            if self.png_dir is not None and images.ndim == 4:
                write_pngs(images, labels, self.png_dir, start=self.store.indices(shard).start)


def write_stored_pngs(path: Path, png_dir: str | Path, chunk: int = 1000) -> None:
    """Every image of an assembled .npz as a PNG (what generating it with ``png_dir`` writes)."""
    with np.load(path) as npz:
        labels = npz[LABELS_KEY]
    start = 0
    for images in iter_samples(path, chunk):
        if images.ndim == 4:
            write_pngs(images, labels[start:start + len(images)], png_dir, start=start)
        start += len(images)


def sample_to_store(trainer: L.Trainer, module: L.LightningModule, store: SampleStore, sampling: SamplingConfig,
                    seed: int, num_classes: int, batch_size: int, decode_batch: int = 32,
                    png_dir: str | Path | None = None, keep_shards: bool = False) -> Path | None:
    """Generates every missing shard of ``store`` on ``trainer``'s devices and assembles the final
    .npz on rank 0 (returns its path there, None on other ranks). A final file assembled with the
    same settings is taken as it is. Call on every rank under DDP."""
    class_balanced_labels(store.num_samples, num_classes)  # fail before any work on an uneven N
    if store.complete():
        if not trainer.is_global_zero:
            return None
        if png_dir is not None:
            write_stored_pngs(store.out, png_dir)
        return store.out
    pending = store.open()
    if pending:
        sampler = ShardSampler(module, store, sampling, seed, num_classes, batch_size, decode_batch, png_dir)
        # every rank needs an item (Lightning's unrepeated sampler refuses an empty rank): pad with -1
        items = pending + [-1] * max(0, trainer.world_size - len(pending))
        trainer.predict(sampler, DataLoader(items, batch_size=1), return_predictions=False)
    if trainer.world_size > 1:
        trainer.strategy.barrier("shards written")
    if not trainer.is_global_zero:
        return None
    return store.assemble(keep_shards)
