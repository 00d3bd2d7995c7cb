"""Refuse a model that cannot fit before allocating it: an OOM-killed process leaves no error, just a
dead run (and, before nar-bench marked them, a RUNNING ghost in MLflow).

The estimate is deliberately a lower bound, so that only sizes that certainly do not fit are refused:
parameters + gradients + AdamW moments (16 bytes per fp32 parameter, also under bf16-mixed, whose
master weights stay fp32) and the activations a transformer keeps for its backward pass, about
17 values per token, channel and layer (Korthikanti et al. 2022, "Reducing activation recomputation
in large transformer models": 34 bytes in 16-bit, without the attention-score term that fused
attention kernels avoid), plus the logits of the output head.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from nar_bench.errors import NarBenchError
from nar_bench.lit.trainer import resolve_precision, uses_gpu
from nar_bench.tokenizers.base import CodeSpace

SKIP_ENV = "NAR_BENCH_SKIP_MEMORY_CHECK"  # =1: train anyway (the estimate is a lower bound, but still an estimate)
STATE_BYTES_PER_PARAM = 16  # fp32 weight + gradient + two AdamW moments
ACTIVATIONS_PER_TOKEN_CHANNEL_LAYER = 17


@dataclass
class TrainingMemory:
    params: int
    state_bytes: int
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.state_bytes + self.activation_bytes


def estimate_training_memory(cfg: DictConfig, codes: CodeSpace, num_classes: int) -> TrainingMemory:
    """Lower-bound training memory of ``cfg.model`` on ``codes`` at ``cfg.data.batch_size`` per device.
    The paradigm is built on the meta device: its parameters are counted exactly, nothing is allocated."""
    from nar_bench.paradigms import build_paradigm
    from nar_bench.paradigms.model_config import model_dims

    with torch.device("meta"):
        paradigm = build_paradigm(cfg, codes, num_classes)
    params = sum(p.numel() for p in paradigm.parameters())
    dim, n_layers, _ = model_dims(cfg.model)
    act_bytes = 2 if "16" in resolve_precision(cfg.trainer) else 4
    tokens = cfg.data.batch_size * (codes.num_tokens + 1)  # + the class token
    activations = tokens * dim * n_layers * ACTIVATIONS_PER_TOKEN_CHANNEL_LAYER + 2 * tokens * codes.vocab_size
    return TrainingMemory(params, params * STATE_BYTES_PER_PARAM, activations * act_bytes)


def _cgroup_available() -> int | None:
    """Memory left under this process's cgroup (v2) limit, None without one."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((root / "memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_memory(gpu: bool) -> tuple[int, str]:
    """(bytes available for training, what they are): GPU 0's total memory, or the RAM available now."""
    if gpu:
        props = torch.cuda.get_device_properties(0)
        return props.total_memory, f"{props.name} memory"
    import psutil

    free = psutil.virtual_memory().available
    cgroup = _cgroup_available()
    return (min(free, cgroup) if cgroup is not None else free), "available RAM"


def check_fits(cfg: DictConfig, codes: CodeSpace, num_classes: int) -> TrainingMemory:
    """Raises NarBenchError (naming the fix) when training ``cfg`` certainly does not fit the device."""
    need = estimate_training_memory(cfg, codes, num_classes)
    have, what = available_memory(uses_gpu(cfg.trainer))
    if need.total_bytes > have and os.environ.get(SKIP_ENV) != "1":
        gib = 2**30
        raise NarBenchError(
            f"model.size={cfg.model.size} ({need.params / 1e6:.0f}M parameters) at "
            f"data.batch_size={cfg.data.batch_size} needs at least {need.total_bytes / gib:.1f} GiB to train "
            f"({need.state_bytes / gib:.1f} GiB weights, "
            f"gradients and AdamW state + {need.activation_bytes / gib:.1f} GiB activations), but {what} is "
            f"{have / gib:.1f} GiB; choose a smaller model.size or data.batch_size, or a larger device "
            f"(set {SKIP_ENV}=1 to try anyway)")
    return need
