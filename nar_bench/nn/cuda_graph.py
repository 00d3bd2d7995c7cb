"""Whole-generation CUDA graphs: one launch replays every decoding step of a batch.

The shared decode engine has static shapes per step, a static KV cache, device-resident schedule
indices and sampling without host synchronisation, so ``generate`` can be captured as a whole.
That removes the per-kernel launch overhead that dominates small batches (hundreds of small
kernels per step). A graph is specific to (paradigm, batch size, sampling config); random draws
still differ between replays (PyTorch advances the captured generator's offset on each replay).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nar_bench.nn.sampling import SamplingConfig

# One warm-up before capture is enough: it allocates the caches and compiles / picks kernels; each
# extra one costs a full host-side pass over every step (seconds for AR's 256 steps), and a
# paradigm already warm at another batch size needs none (``metrics.efficiency.capture_generation``).
CAPTURE_WARMUP = 1


class GraphedGenerate:
    """``GraphedGenerate(paradigm, batch, sampling)(labels)`` == ``paradigm.generate(labels, sampling)``."""

    def __init__(self, paradigm: torch.nn.Module, batch_size: int, sampling: SamplingConfig,
                 warmup: int = CAPTURE_WARMUP):
        device = next(paradigm.parameters()).device
        if device.type != "cuda":
            raise ValueError("CUDA graphs need the paradigm on a CUDA device")
        self.paradigm, self.sampling = paradigm, sampling
        self.labels = torch.zeros(batch_size, dtype=torch.long, device=device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up allocates caches and picks kernels outside capture
            for _ in range(warmup):
                paradigm.generate(self.labels, sampling)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = paradigm.generate(self.labels, sampling)

    def __call__(self, labels: Tensor) -> Tensor:
        self.labels.copy_(labels)
        self.graph.replay()
        return self.out.clone()

