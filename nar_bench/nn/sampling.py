"""Token sampling shared by every paradigm: CFG, temperature, top-k, top-p, batched over all
tokens of a step in one call.

Classifier-free guidance (CFG) follows the official loops (LlamaGen, NAR, PAR, VAR): it is on only
when ``cfg_scale > 1``; a scale <= 1 means no guidance and no batch doubling, exactly as those
loops treat it. Guidance is per decoding step (all tokens of a step share one forward), so the
interval is counted in steps: ``cfg_interval = N`` guides decoding steps 0 .. N-1 and samples the
rest from the conditional logits alone, in every paradigm. Official scripts count their
``cfg_interval`` differently per repository (tokens, decode iterations after the prefill, a
counter that restarts); ``cfg_schedule="official"`` reads the value as the paradigm's official
script does, so the value copied from that script guides the same tokens (each paradigm's
``official_guided_steps`` states the rule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from nar_bench.errors import NarBenchError
from nar_bench.nn.noise import RowNoise
from nar_bench.nn.sampling_config import CFG_SCHEDULES, SamplingConfig  # noqa: F401  (torch-free, for the schema)


def guided_steps(sampling: SamplingConfig, num_steps: int,
                 official: Callable[[int], list[bool] | None] | None = None) -> list[bool]:
    """Per decoding step, whether guidance applies. ``official(N)`` gives the paradigm's official
    reading of ``cfg_interval = N >= 0`` (used for ``cfg_schedule="official"``; None = that
    paradigm's official sampler has no interval)."""
    n = sampling.cfg_interval
    if not sampling.uses_cfg:
        return [False] * num_steps
    if n < 0:
        return [True] * num_steps
    if sampling.cfg_schedule == "steps":
        return [s < n for s in range(num_steps)]
    flags = official(n) if official is not None else None
    if flags is None:
        raise NarBenchError("this paradigm's official sampler has no cfg_interval; set "
                            "eval.sampling.cfg_schedule=steps or eval.sampling.cfg_interval=-1")
    if len(flags) != num_steps:
        raise ValueError(f"official guidance schedule covers {len(flags)} steps, the paradigm decodes {num_steps}")
    return flags


def guided_while_tokens_before_at_most(step_sizes: Sequence[int], interval: int) -> list[bool]:
    """Official NAR's rule (images and video): step k is guided while the tokens generated before it
    number at most ``interval``; the first step (from the condition alone) is always guided."""
    flags, before = [], 0
    for size in step_sizes:
        flags.append(before <= interval)
        before += size
    return flags


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
        # Unsorted: the draw needs the candidate set, not its order (top-p sorts the k values itself)
        values, candidates = logits.topk(top_k, dim=-1, sorted=False)
        choice = _draw(filter_logits(values.float() / temperature, top_p=top_p), generator)
        return candidates.gather(-1, choice[..., None]).squeeze(-1)
    return _draw(filter_logits(logits.float() / temperature, top_p=top_p), generator)


def sample_guided(logits: Tensor, scale: float, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> Tensor:
    """``sample(guide(logits, scale), ...)`` with the fp32 work on the top-k candidates only.

    logits (2B, ..., V): conditional rows first. The candidates are picked from the guided logits
    in the logits' own dtype (``lerp``: one pass, fp32 maths inside, no fp32 (B, ..., V) tensor),
    then their guided values are recomputed exactly in fp32 from cond and uncond, so the draw sees
    today's fp32 values; only a candidate tied with the k-th value within the logits' rounding can
    differ. Without top-k, or greedy, it is exactly ``sample(guide(logits, scale), ...)``.
    """
    if temperature == 0 or not 0 < top_k < logits.shape[-1]:
        return sample(guide(logits, scale), temperature, top_k, top_p, generator)
    cond, uncond = logits.chunk(2, dim=0)
    candidates = torch.lerp(uncond, cond, scale).topk(top_k, dim=-1, sorted=False).indices
    c, u = cond.gather(-1, candidates).float(), uncond.gather(-1, candidates).float()
    values = u + scale * (c - u)
    choice = _draw(filter_logits(values / temperature, top_p=top_p), generator)
    return candidates.gather(-1, choice[..., None]).squeeze(-1)


def _draw(logits: Tensor, generator: torch.Generator | RowNoise | None) -> Tensor:
    """Categorical draw from logits (B, ..., V). A ``RowNoise`` gives each row noise of its own
    (per-sample seeds: independent of batch size and rank); a ``torch.Generator`` one shared stream."""
    probs = logits.softmax(-1)
    if isinstance(generator, RowNoise):
        race = generator.exponential(tuple(probs.shape))
    else:
        race = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / race).argmax(-1)


def sample_step(logits: Tensor, cfg: SamplingConfig, guided: bool, generator: torch.Generator | None = None,
                scale: float | None = None) -> Tensor:
    """One decoding step: logits (B or 2B, n, V) for every token of the step -> ids (B, n).
    Under CFG (2B rows) ``guided`` picks guidance (scale ``scale``, default ``cfg.cfg_scale``, applied
    to the top-k candidates only, ``sample_guided``) or the conditional rows alone (see ``guided_steps``)."""
    if cfg.uses_cfg and guided:
        return sample_guided(logits, cfg.cfg_scale if scale is None else scale, cfg.temperature, cfg.top_k,
                             cfg.top_p, generator)
    return sample(guided_logits(logits, cfg, False), cfg.temperature, cfg.top_k, cfg.top_p, generator)


def guided_logits(logits: Tensor, cfg: SamplingConfig, guided: bool, scale: float | None = None) -> Tensor:
    """Full-vocabulary logits of one step: (B or 2B, n, V) -> (B, n, V); under CFG guided (scale
    ``scale``, default ``cfg.cfg_scale``) when ``guided``, else the conditional rows."""
    if not cfg.uses_cfg:
        return logits
    return guide(logits, cfg.cfg_scale if scale is None else scale) if guided else logits.chunk(2, dim=0)[0]
