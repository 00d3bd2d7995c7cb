"""Class-balanced sampling into a ``SampleStore`` through ``Trainer.predict``: the same images for
any number of devices and any assignment of shards to them.

Work is split by shard (a fixed range of sample indices), not by batch: under DDP each rank
generates whole shards (Lightning's predict sampler hands every shard to one rank) and writes them
itself, so nothing is gathered. Sample i has label ``i % num_classes`` and draws its noise from
``RowNoise.for_samples(seed, i)``. Generation and decoding go through the evaluation's engine
(``nar_bench.paradigms.generation``: eager, or the compiled step in one CUDA graph + the fast
decoder), in fixed micro-batches from each shard's first sample (its invariance rule), so every
kernel sees the same shapes whichever rank generates a shard.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from nar_bench.errors import NarBenchError
from nar_bench.metrics.adm_npz import LABELS_KEY, iter_samples
from nar_bench.metrics.sample_store import SampleStore, write_pngs
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.paradigms.generation import GenerationEngine

GIB = 2**30
# (samples done, samples this process generates, seconds since its first shard started)
Progress = Callable[[int, int, float], None]


def class_balanced_labels(num_samples: int, num_classes: int) -> Tensor:
    """(num_samples,) labels i % num_classes: exactly num_samples / num_classes per class, in a fixed order."""
    if num_samples % num_classes:
        raise NarBenchError(f"{num_samples} samples cannot be split evenly over {num_classes} classes; choose a "
                            f"multiple of {num_classes} (e.g. {num_classes * max(1, num_samples // num_classes)})")
    return torch.arange(num_samples) % num_classes


class ShardSampler(L.LightningModule):
    """Predict-only: batch = one shard id; generates that shard's samples and writes the shard.

    module: a GeneratorModule (``paradigm`` + ``tokenizer``); ``batch_size`` samples per generation
    (micro-batch), ``decode_batch`` codes per decode call; ``engine`` / ``dtype`` as
    ``GenerationEngine.for_evaluation`` takes them (the engine is built on the first shard, on the
    device Lightning moved the module to). ``items``: the shard ids handed to predict, for the
    progress bar's total; ``progress`` is called on global rank 0 after each shard."""

    def __init__(self, module: L.LightningModule, store: SampleStore, sampling: SamplingConfig, seed: int,
                 num_classes: int, batch_size: int, decode_batch: int = 32, png_dir: str | Path | None = None,
                 engine: str = "eager", dtype: str | None = None, items: list[int] | None = None,
                 progress: Progress | None = None):
        super().__init__()
        self.module, self.store, self.sampling, self.seed = module, store, sampling, seed
        self.num_classes, self.batch_size, self.decode_batch = num_classes, batch_size, decode_batch
        self.png_dir, self.engine_name, self.engine_dtype = png_dir, engine, dtype
        self.items, self.progress = items, progress
        self.generation: GenerationEngine | None = None
        self.write_s, self.done = 0.0, 0
        # one shard is written (zip CRC, disk) on a thread while the GPU makes the next
        self.writer: ThreadPoolExecutor | None = None
        self.writing: Future | None = None
        self.bar: tqdm | None = None
        self.start = 0.0

    def generation_engine(self) -> GenerationEngine:
        if self.generation is None:
            self.generation = GenerationEngine.for_evaluation(
                self.module.paradigm, self.module.tokenizer, self.sampling, self.batch_size, self.decode_batch,
                self.engine_name, self.engine_dtype)
        return self.generation

    @torch.inference_mode()
    def shard_images(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        """(images (n, H, W, 3) uint8, labels (n,)) of shard ``shard``; a video tokenizer's clips are
        stored frames first, (n, T, H, W, 3)."""
        indices = self.store.indices(shard)
        engine = self.generation_engine()
        images = engine.decode_to_host(engine.sample_codes(indices.start, len(indices), self.seed, self.num_classes))
        labels = torch.arange(indices.start, indices.stop) % self.num_classes
        return images, labels.numpy()

    def my_samples(self) -> int:
        """Samples of the shards this process will generate (Lightning's unrepeated predict sampler
        hands rank r the items r, r + world, ...)."""
        if self.items is None:
            return 0
        mine = self.items[self.global_rank::self.trainer.world_size]
        return sum(len(self.store.indices(shard)) for shard in mine if shard >= 0)

    def on_predict_start(self) -> None:
        self.start = time.perf_counter()
        self.bar = tqdm(total=self.my_samples(), unit="sample", desc=f"generating samples ({self.engine_name})",
                        disable=not self.trainer.is_global_zero, dynamic_ncols=True)

    def on_predict_end(self) -> None:
        """Waits for the last shard's write (raising its error), then closes the bar; also called
        when predict fails, where the write in flight is waited for and its error dropped."""
        try:
            self.wait_for_write()
        finally:
            if self.writer is not None:
                self.writer.shutdown(wait=True)
                self.writer = None
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    def wait_for_write(self) -> None:
        """Blocks until the shard in flight is written; the time blocked counts as ``write_s`` (the
        writing that generation did not hide)."""
        if self.writing is not None:
            clock = time.perf_counter()
            writing, self.writing = self.writing, None
            writing.result()
            self.write_s += time.perf_counter() - clock

    def write(self, shard: int, images: np.ndarray, labels: np.ndarray) -> None:
        self.store.write_shard(shard, images, labels)
        if self.png_dir is not None and images.ndim == 4:
            write_pngs(images, labels, self.png_dir, start=self.store.indices(shard).start)

    def predict_step(self, batch: Tensor, batch_idx: int) -> None:
        for shard in batch.tolist():
            if shard < 0:  # padding: a rank with no shard of its own
                continue
            images, labels = self.shard_images(shard)
            self.wait_for_write()
            if self.writer is None:
                self.writer = ThreadPoolExecutor(1, thread_name_prefix="shard-writer")
            self.writing = self.writer.submit(self.write, shard, images, labels)
            self.done += len(labels)
            if self.bar is not None:
                self.bar.update(len(labels))
            if self.progress is not None and self.trainer.is_global_zero:
                self.progress(self.done, self.bar.total if self.bar is not None else self.done,
                              time.perf_counter() - self.start)

    def speed(self) -> dict[str, float]:
        """This process's engine stats (``GenerationStats.speed``), shard write seconds and, on a
        GPU, its peak memory in GiB (reset before its first shard)."""
        out = self.generation.stats.speed() if self.generation is not None else {}
        out["write_s"] = self.write_s
        if self.generation is not None and self.generation.device.type == "cuda":
            out["peak_mem_gb"] = torch.cuda.max_memory_allocated(self.generation.device) / GIB
        return out


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
                    png_dir: str | Path | None = None, keep_shards: bool = False, engine: str = "eager",
                    dtype: str | None = None, progress: Progress | None = None,
                    speed: dict[str, float] | None = None,
                    observe: Callable[[np.ndarray], None] | None = None) -> Path | None:
    """Generates every missing shard of ``store`` on ``trainer``'s devices and assembles the final
    .npz on rank 0 (returns its path there, None on other ranks). A final file assembled with the
    same settings is taken as it is. Call on every rank under DDP. ``speed``, when given, receives
    this process's ``ShardSampler.speed()`` (assembling counted in write_s); nothing when every shard
    was already written. ``observe``: see ``SampleStore.assemble`` (not called when the final file
    was already complete)."""
    class_balanced_labels(store.num_samples, num_classes)  # fail before any work on an uneven N
    if store.complete():
        if not trainer.is_global_zero:
            return None
        if png_dir is not None:
            write_stored_pngs(store.out, png_dir)
        return store.out
    pending = store.open()
    sampler = None
    if pending:
        # every rank needs an item (Lightning's unrepeated sampler refuses an empty rank): pad with -1
        items = pending + [-1] * max(0, trainer.world_size - len(pending))
        sampler = ShardSampler(module, store, sampling, seed, num_classes, batch_size, decode_batch, png_dir,
                               engine, dtype, items, progress)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            trainer.predict(sampler, DataLoader(items, batch_size=1), return_predictions=False)
        except BaseException:  # the shard in flight is finished, and the one error line starts on its own line
            with contextlib.suppress(Exception):
                sampler.on_predict_end()
            raise
    if trainer.world_size > 1:
        trainer.strategy.barrier("shards written")
    if not trainer.is_global_zero:
        return None
    clock = time.perf_counter()
    path = store.assemble(keep_shards, observe)
    if speed is not None and sampler is not None:
        speed.update(sampler.speed())
        speed["write_s"] += time.perf_counter() - clock
    return path
