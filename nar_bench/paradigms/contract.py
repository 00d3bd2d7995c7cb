"""Checks that a paradigm's decoding computes exactly what its teacher-forced forward does.

Every decoding step's logits (``Paradigm.step_logits``, recorded while ``generate`` runs) must equal
the logits ``forward`` gives on the finished codes at the positions the step produced
(``step_positions``), as that step saw them (``forward_at_step``: the training mask hides the rest
for a fixed schedule; MaskGIT masks the tokens committed from that step on). For the KV-cached
paradigms this is "cached decoding == full masked forward"; for MaskGIT, which re-reads the whole
sequence, it checks that the mask token hides a position completely. Every registered paradigm
passes it (``tests/test_paradigm_registry.py``); tolerance is float round-off (about 1e-5 in fp32).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nar_bench.nn.modes import eval_mode
from nar_bench.nn.sampling import SamplingConfig, with_null_class
from nar_bench.paradigms.base import Paradigm


def decode_with_step_logits(model: Paradigm, labels: Tensor, sampling: SamplingConfig,
                            generator: torch.Generator | None = None) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """Runs ``model.generate`` and records every step's logits before guidance.

    Returns the codes (B, N), flattened, and per step (positions (n,) or (B, n), logits (B', n, V)),
    B' = 2B under CFG.
    """
    recorded: list[tuple[Tensor, Tensor]] = []
    step_logits = model.step_logits

    def record(step: int, fed):
        logits = step_logits(step, fed)
        recorded.append((model.step_positions(step, fed), logits.clone()))
        return logits

    model.step_logits = record  # instance attribute shadows the method for this one call
    try:
        tokens = model.generate(labels, sampling, generator).flatten(1)
    finally:
        del model.step_logits
    return tokens, recorded


@torch.no_grad()
def teacher_forced_logits(model: Paradigm, tokens: Tensor, labels: Tensor, sampling: SamplingConfig,
                          step: int = 0) -> Tensor:
    """``forward_at_step`` in eval mode on (B, N) codes, with the null-class rows appended under CFG."""
    if sampling.uses_cfg:
        tokens, labels = tokens.repeat(2, 1), with_null_class(labels, model.model_cfg.num_classes)
    with eval_mode(model):
        return model.forward_at_step(tokens, labels, step)


def decode_forward_gap(model: Paradigm, labels: Tensor, sampling: SamplingConfig,
                       generator: torch.Generator | None = None) -> float:
    """Largest absolute difference between decode-step logits and teacher-forced logits. Raises
    ValueError unless there is one recorded step per decoding step and, together, they predict every
    position of every sample: exactly once for a fixed schedule (MaskGIT predicts every still-masked
    position at each step and commits some)."""
    tokens, recorded = decode_with_step_logits(model, labels, sampling, generator)
    if len(recorded) != model.num_steps:
        raise ValueError(f"generate computed step logits {len(recorded)} times for {model.num_steps} decoding steps")
    batch = tokens.shape[0]
    predicted = torch.zeros(tokens.shape, dtype=torch.long)
    gap, forward = 0.0, None
    for step, (positions, logits) in enumerate(recorded):
        if forward is None or not model.fixed_schedule:  # a fixed schedule's forward does not depend on the step
            forward = teacher_forced_logits(model, tokens, labels, sampling, step)
        rows = positions.to(forward.device).expand(batch, -1)  # (B, n)
        index = rows.repeat(forward.shape[0] // batch, 1)  # the null-class rows produce the same positions
        expected = forward.gather(1, index[..., None].expand(-1, -1, forward.shape[-1]))
        gap = max(gap, (logits - expected).abs().max().item())
        predicted.scatter_add_(1, rows.cpu(), torch.ones(rows.shape, dtype=torch.long))
    if not ((predicted == 1).all() if model.fixed_schedule else (predicted >= 1).all()):
        raise ValueError("the decoding steps do not predict every position " +
                         ("exactly once" if model.fixed_schedule else "at least once"))
    return gap
