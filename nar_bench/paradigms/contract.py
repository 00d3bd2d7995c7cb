"""Checks that a paradigm's cached decoding computes exactly what its teacher-forced forward does.

A KV-cached decode step must give the logits that ``forward`` gives on the finished sequence
(same mask, same heads). Used by the tests of every ``SequenceParadigm``; tolerance is float
round-off (about 1e-5 in fp32).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nar_bench.nn.modes import eval_mode
from nar_bench.nn.sampling import SamplingConfig, with_null_class
from nar_bench.paradigms.engine import SequenceParadigm


def decode_with_step_logits(model: SequenceParadigm, labels: Tensor, sampling: SamplingConfig,
                            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Runs ``model.generate`` and records every step's logits before guidance.

    Returns tokens (B, N) and logits (B or 2B under CFG, N, V), both in raster layout.
    """
    steps = model.schedule()
    recorded: list[Tensor] = []
    step_logits = model.step_logits

    def record(step: int, fed):
        logits = step_logits(step, fed)
        recorded.append(logits.clone())
        return logits

    model.step_logits = record  # instance attribute shadows the method for this one call
    try:
        tokens = model.generate(labels, sampling, generator).flatten(1)
    finally:
        del model.step_logits
    full = recorded[0].new_empty(recorded[0].shape[0], model.num_tokens, recorded[0].shape[-1])
    for idx, logits in zip(steps, recorded, strict=True):
        full[:, idx.to(full.device)] = logits
    return tokens, full


@torch.no_grad()
def teacher_forced_logits(model: SequenceParadigm, tokens: Tensor, labels: Tensor, sampling: SamplingConfig) -> Tensor:
    """``forward`` in eval mode on (B, N) tokens, with the null-class rows appended under CFG."""
    if sampling.uses_cfg:
        tokens, labels = tokens.repeat(2, 1), with_null_class(labels, model.model_cfg.num_classes)
    with eval_mode(model):
        return model(tokens, labels)


def decode_forward_gap(model: SequenceParadigm, labels: Tensor, sampling: SamplingConfig,
                       generator: torch.Generator | None = None) -> float:
    """Largest absolute difference between decode-step logits and teacher-forced logits."""
    tokens, decoded = decode_with_step_logits(model, labels, sampling, generator)
    return (decoded - teacher_forced_logits(model, tokens, labels, sampling)).abs().max().item()
