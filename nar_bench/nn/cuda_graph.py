"""Whole-generation CUDA graphs: one launch replays every decoding step of a batch.

The shared decode engine has static shapes per step, a static KV cache, device-resident schedule
indices and sampling without host synchronisation, so ``generate`` can be captured as a whole.
That removes the per-kernel launch overhead that dominates small batches (hundreds of small
kernels per step). A graph is specific to (paradigm, batch size, sampling config). Its noise is
per sample (``nar_bench.nn.noise.RowNoise``): the rows' keys are a static input buffer, copied in
before each replay like the labels, so a replay draws exactly what eager ``generate`` draws for
the same sample indices (each step's draw counter is a constant of the captured kernels).
"""

from __future__ import annotations

import gc
import logging

import torch
from torch import Tensor

from nar_bench.nn.noise import RowNoise
from nar_bench.nn.sampling import SamplingConfig

log = logging.getLogger(__name__)

# One warm-up before capture is enough: it allocates the caches and compiles / picks kernels; each
# extra one costs a full host-side pass over every step (seconds for AR's 256 steps), and a
# paradigm already warm at another batch size needs none (``capture_generation``).
CAPTURE_WARMUP = 1


class GraphedGenerate:
    """``GraphedGenerate(paradigm, batch, sampling)(labels, keys)`` ==
    ``paradigm.generate(labels, sampling, RowNoise(keys))``: labels (B,) and row keys (B,) int64
    (``RowNoise.for_samples(seed, index).keys``); without ``keys`` a replay reuses the last ones."""

    def __init__(self, paradigm: torch.nn.Module, batch_size: int, sampling: SamplingConfig,
                 warmup: int = CAPTURE_WARMUP):
        device = next(paradigm.parameters()).device
        if device.type != "cuda":
            raise ValueError("CUDA graphs need the paradigm on a CUDA device")
        self.paradigm, self.sampling = paradigm, sampling
        self.labels = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.keys = RowNoise.for_samples(0, torch.arange(batch_size, device=device)).keys
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up allocates caches and picks kernels outside capture
            for _ in range(warmup):
                paradigm.generate(self.labels, sampling, RowNoise(self.keys))
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = paradigm.generate(self.labels, sampling, RowNoise(self.keys))

    def __call__(self, labels: Tensor, keys: Tensor | None = None) -> Tensor:
        self.labels.copy_(labels)
        if keys is not None:
            self.keys.copy_(keys)
        self.graph.replay()
        return self.out.clone()


def release_decode_state(paradigm: torch.nn.Module) -> None:
    """Drops the static KV caches (any ``kv_cache`` attribute) and, on GPU, the cached blocks, so
    the next point allocates from a clean state: a previous batch's caches would otherwise inflate
    its peak memory and could make it run out of memory early."""
    for m in paradigm.modules():
        if getattr(m, "kv_cache", None) is not None:
            m.kv_cache = None
    if torch.cuda.is_available():
        gc.collect()  # tensors held by reference cycles (e.g. an OOM traceback) go too
        # cuBLAS keeps a workspace per stream (32 MiB on Hopper); one made during a capture lives
        # in that graph's private pool and would keep the pool's memory after the graph is gone
        torch._C._cuda_clearCublasWorkspaces()
        torch.cuda.empty_cache()


def capture_generation(paradigm: torch.nn.Module, batch_size: int, sampling: SamplingConfig,
                       warm: bool = False) -> GraphedGenerate:
    """The CUDA graph of one batch size's generation. ``warm``: the paradigm has already generated
    with these settings on this device at another batch size (its kernels compiled, its schedule on
    the device), so the graph is captured without the eager pass first. A compile inside a capture
    would fail it at the CUDA level (its autotuning cannot be captured) and leave the capture's
    memory pool behind, so the warm capture refuses to compile: when this size needs a graph
    torch.compile has not built yet (e.g. 64-bit indexing past 2^31 elements), the caches it made
    are dropped and it warms up and captures again."""
    if warm:
        try:
            with torch.compiler.set_stance("fail_on_recompile"):
                return GraphedGenerate(paradigm, batch_size, sampling, warmup=0)
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        log.warning("batch %d needs an eager pass before its capture (%s); warming up first", batch_size, reason)
        release_decode_state(paradigm)  # outside the except block, so the traceback's tensors are gone
    return GraphedGenerate(paradigm, batch_size, sampling)
