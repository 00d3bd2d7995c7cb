"""Token sampling shared by every paradigm: CFG, temperature, top-k, top-p, batched over all
tokens of a step in one call."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nar_bench.nn.noise import RowNoise


@dataclass
class SamplingConfig:
    cfg_scale: float = 2.0  # 1.0 disables guidance (no batch doubling)
    cfg_interval: int = -1  # guidance off after this many decoding steps; -1 = always on
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale != 1.0


def with_null_class(labels: Tensor, num_classes: int) -> Tensor:
    """CFG doubles the batch: conditional rows first, then the same count of null-class rows."""
    return torch.cat([labels, torch.full_like(labels, num_classes)])


def guide(logits: Tensor, scale: float) -> Tensor:
    """(2B, ..., V) -> (B, ..., V): uncond + scale * (cond - uncond)."""
    cond, uncond = logits.float().chunk(2, dim=0)
    return uncond + scale * (cond - uncond)


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Masks logits (..., V) outside the top-k set and the top-p nucleus with -inf."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = (cum - sorted_logits.softmax(-1)) > top_p  # keeps the token that crosses p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> Tensor:
    """logits (..., V) -> token ids (...). temperature 0 means greedy.

    With top-k the draw happens among the k candidates only (sorted by ``topk``), so temperature,
    top-p and softmax touch k instead of V values per token: the same distribution as filtering
    the full vocabulary, at a fraction of the memory traffic. Categorical draws use the
    exponential race (argmax of p / Exp(1)), which needs no host sync, unlike ``torch.multinomial``.
    """
    if temperature == 0:
        return logits.argmax(-1)
    if 0 < top_k < logits.shape[-1]:
        values, candidates = logits.topk(top_k, dim=-1)  # descending, so top-p is a prefix
        choice = _draw(filter_logits(values.float() / temperature, top_p=top_p), generator)
        return candidates.gather(-1, choice[..., None]).squeeze(-1)
    return _draw(filter_logits(logits.float() / temperature, top_p=top_p), generator)


def _draw(logits: Tensor, generator: torch.Generator | RowNoise | None) -> Tensor:
    """Categorical draw from logits (B, ..., V). A ``RowNoise`` gives each row noise of its own
    (per-sample seeds: independent of batch size and rank); a ``torch.Generator`` one shared stream."""
    probs = logits.softmax(-1)
    if isinstance(generator, RowNoise):
        race = generator.exponential(tuple(probs.shape))
    else:
        race = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / race).argmax(-1)


def sample_step(logits: Tensor, cfg: SamplingConfig, step: int, generator: torch.Generator | None = None,
                scale: float | None = None) -> Tensor:
    """Decoding step ``step``: logits (B or 2B, n, V) for every token of the step -> ids (B, n).
    Guidance (scale ``scale``, default ``cfg.cfg_scale``) is dropped from step ``cfg.cfg_interval`` on."""
    if cfg.uses_cfg:
        guided = cfg.cfg_interval < 0 or step < cfg.cfg_interval
        logits = guide(logits, cfg.cfg_scale if scale is None else scale) if guided else logits.chunk(2, dim=0)[0]
    return sample(logits, cfg.temperature, cfg.top_k, cfg.top_p, generator)
