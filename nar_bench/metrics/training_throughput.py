"""Training cost of a paradigm: images/s of one bf16 training step (forward + loss + backward +
AdamW step) on random codes, so each paradigm's training mask and heads show up in the price.

Protocol: weights stay fp32 (the optimizer's master copy), the step runs under bf16 autocast on
CUDA (fp32 on CPU), AdamW (fused on CUDA), ``warmup`` untimed steps, then ``repeats`` timed steps
(CUDA events / perf_counter); step time = median; images/s = batch / step time. Peak memory is
reset before the timed steps. ``attention="flex"`` runs the masked training attention through
FlexAttention block masks (``nar_bench.nn.flex_masks``), "dense" through SDPA with the boolean mask.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from nar_bench.metrics.efficiency import GIB, model_size_name, reset_device_memory, resolve_device, timed
from nar_bench.nn.flex_masks import disable_flex_training, enable_flex_training
from nar_bench.paradigms.base import Paradigm

ATTENTION = ("dense", "flex")


@dataclass
class TrainingResult:
    paradigm: str
    size: str
    batch_size: int
    attention: str  # dense | flex
    status: str = "ok"  # ok | oom
    step_s: float | None = None  # median seconds per step
    images_s: float | None = None
    peak_mem_gb: float | None = None


def random_codes(paradigm: Paradigm, batch_size: int, device: torch.device, seed: int = 0):
    """Random codes (B, num_tokens) and labels (B,) the paradigm trains on."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(paradigm.model_cfg.vocab_size, (batch_size, paradigm.num_tokens), generator=gen)
    labels = torch.randint(paradigm.model_cfg.num_classes, (batch_size,), generator=gen)
    return tokens.to(device), labels.to(device)


def measure_training_step(paradigm: Paradigm, batch_size: int, *, attention: str = "dense", warmup: int = 2,
                          repeats: int = 5, device: torch.device | str | None = None, lr: float = 1e-4,
                          seed: int = 0) -> TrainingResult:
    """Images/s of a training step of ``paradigm`` at ``batch_size`` (module docstring). The
    paradigm's weights are updated (random-weight benchmarking only)."""
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}; got {attention!r}")
    device = resolve_device(paradigm, device)
    paradigm.float().train()
    result = TrainingResult(paradigm.name, model_size_name(paradigm), batch_size, attention)
    if attention == "flex":
        enable_flex_training(paradigm)
    reset_device_memory(device)
    cuda = device.type == "cuda"
    tokens, labels = random_codes(paradigm, batch_size, device, seed)
    optimizer = torch.optim.AdamW(paradigm.parameters(), lr=lr, fused=cuda)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = paradigm.loss(tokens, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    try:
        for _ in range(warmup):
            step()
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        times = [timed(step, device) for _ in range(repeats)]
    except torch.cuda.OutOfMemoryError:
        result.status = "oom"
    finally:
        if attention == "flex":
            disable_flex_training(paradigm)
    if result.status == "oom":
        reset_device_memory(device)
        return result
    result.step_s = statistics.median(times)
    result.images_s = batch_size / result.step_s
    result.peak_mem_gb = torch.cuda.max_memory_allocated(device) / GIB if cuda else None
    paradigm.eval()
    return result
