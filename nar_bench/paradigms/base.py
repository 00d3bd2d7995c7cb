"""The one interface every generation paradigm implements, and the decode engine shared by the
paradigms that run on the LLaMA backbone (raster AR, PAR, NAR).

A paradigm is defined by its schedule: the list of token positions produced at each decoding
step. The training mask, the decode loop and the step count all derive from it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nar_bench.nn.fused_decode import enable_fused_decode
from nar_bench.nn.sampling import SamplingConfig, sample_step, with_null_class
from nar_bench.nn.transformer import Transformer, TransformerConfig, condition_rope, rope_table, setup_kv_caches


@dataclass
class NoOptions:
    """Paradigms without options of their own."""


class Paradigm(nn.Module, ABC):
    """Generator over a grid of discrete tokens, conditioned on a class label.

    Subclasses set ``name`` (the config string) and, if they have options, ``Options`` (a
    dataclass; its fields are the valid keys of ``model.options``).
    """

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions

    def __init__(self, model: TransformerConfig, grid: tuple[int, ...], options: Any = None):
        super().__init__()
        self.model_cfg = model
        self.grid = tuple(int(g) for g in grid)
        self.options = options if options is not None else self.Options()

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @abstractmethod
    def schedule(self) -> list[Tensor]:
        """Raster indices (into the flattened grid) of the tokens produced at each decoding step."""

    @property
    def num_steps(self) -> int:
        return len(self.schedule())

    @abstractmethod
    def train_mask(self) -> Tensor:
        """Boolean (S, S) attention mask of the training sequence; True = may attend."""

    @abstractmethod
    def forward(self, tokens: Tensor, labels: Tensor) -> Tensor:
        """Teacher-forced logits (B, N, V), row n predicting raster token n of ``tokens`` (B, N)."""

    def loss(self, tokens: Tensor, labels: Tensor) -> Tensor:
        logits = self(tokens, labels)
        return F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())

    def cache_dtype(self) -> torch.dtype:
        """KV-cache dtype: the autocast dtype when decoding runs under autocast, else the weights'."""
        weight = next(self.parameters())
        device = weight.device.type
        return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype

    def attach_tokenizer(self, tokenizer: nn.Module) -> None:
        """Hook for paradigms whose inputs depend on the tokenizer (VAR's multi-scale features)."""

    @abstractmethod
    def generate(self, labels: Tensor, sampling: SamplingConfig, generator: torch.Generator | None = None) -> Tensor:
        """Samples codes for ``labels`` (B,); returns (B, *grid) in raster layout."""


def grid_coords(grid: tuple[int, ...]) -> Tensor:
    """(N, D) coordinates of the raster-order tokens of a D-dimensional grid."""
    axes = torch.meshgrid(*(torch.arange(g) for g in grid), indexing="ij")
    return torch.stack(axes, -1).reshape(-1, len(grid))


def step_of_positions(schedule: list[Tensor], num_tokens: int) -> Tensor:
    """(N,) decoding step at which each raster position is produced."""
    step = torch.full((num_tokens,), -1, dtype=torch.long)
    for s, idx in enumerate(schedule):
        step[idx] = s
    if (step < 0).any():
        raise ValueError("schedule does not cover every token")
    return step


def visibility_mask(seq_steps: Tensor, cls_token_num: int) -> Tensor:
    """Mask over [condition tokens, sequence] where a token sees every token of an earlier or the
    same step. Condition tokens get steps -cls..-1: causal among themselves, visible to all.

    seq_steps: (N,) step of the token each hidden state *predicts from*, in sequence order.
    Returns (cls + N, cls + N) bool.
    """
    steps = torch.cat([torch.arange(-cls_token_num, 0), seq_steps])
    return steps[None, :] <= steps[:, None]


class SequenceParadigm(Paradigm):
    """Paradigm on the shared LLaMA backbone whose decoding feeds one group of tokens per step.

    The training sequence is [condition, tokens in raster order] under ``train_mask``. Decoding
    fills a static KV cache in schedule order, so each step attends to the filled prefix without a
    mask. Subclasses define the schedule, the mask, ``forward`` and ``step_logits`` (how hidden
    states become logits for their targets).
    """

    def __init__(self, model: TransformerConfig, grid: tuple[int, ...], options: Any = None):
        super().__init__(model, grid, options)
        self.backbone = Transformer(model)
        rope = condition_rope(rope_table(grid_coords(self.grid), model.head_dim, model.rope_base), model.cls_token_num)
        self.register_buffer("rope", rope, persistent=False)  # (cls + N, head_dim/2, 2), raster order
        self.register_buffer("mask", self.train_mask(), persistent=False)

    def hidden_states(self, tokens: Tensor, labels: Tensor) -> Tensor:
        """Teacher-forced backbone output (B, cls + N, dim) for the raster sequence."""
        h = self.backbone.embed(tokens, labels)
        return self.backbone.run_blocks(h, self.rope, self.mask)

    # --- decoding -------------------------------------------------------------------------------
    def feed(self, x: Tensor, rope: Tensor, cache_start: int) -> Any:
        """Runs embedded inputs (B, n, dim) through the cached model; returns what
        ``step_logits`` needs (by default the backbone's hidden states)."""
        return self.backbone.run_blocks(x, rope, cache_start=cache_start)

    def decode_inputs(self, step: int, tokens: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Inputs fed after sampling ``step``: embedded tokens (B', m, dim) and their rotary rows
        (m, head_dim/2, 2), from the step's new tokens (B', n) at raster indices ``idx`` (n,).
        By default m = n; paradigms that feed extra inputs (PAR's transition tokens) append them.
        The cache holds cls + N positions and the last step is never fed, so up to
        ``len(schedule()[-1])`` extra inputs fit."""
        return self.backbone.tok_embeddings(tokens), self.rope[self.model_cfg.cls_token_num + idx]

    @abstractmethod
    def step_logits(self, step: int, fed: Any) -> Tensor:
        """Logits (B, n_step, V) for the tokens of ``step`` from the state fed at step-1 (or the
        condition, for step 0), in the order of ``schedule()[step]``."""

    def compile_decoding(self, attention: str = "auto") -> None:
        """Routes every cached block step through the fused decode path
        (``nar_bench.nn.fused_decode``): two torch.compile regions per block (norm + QKV + RoPE;
        wo + norm + SwiGLU + residuals), compiled once for all blocks, steps and batch sizes, and a
        decode attention kernel that writes the KV cache and reads only its filled prefix.
        Safe to call twice."""
        enable_fused_decode(self, compile=True, attention=attention)

    def device_schedule(self, device: torch.device) -> list[Tensor]:
        """The schedule's index tensors on ``device``, copied once: the decode loop then does no
        host-to-device copies (required to capture it in a CUDA graph)."""
        cached = getattr(self, "_device_schedule", None)
        if cached is None or cached[0].device != device:
            cached = [idx.to(device) for idx in self.schedule()]
            self._device_schedule = cached
        return cached

    @torch.inference_mode()
    def generate(self, labels: Tensor, sampling: SamplingConfig, generator: torch.Generator | None = None) -> Tensor:
        was_training = self.training
        self.eval()
        cls_n, steps = self.model_cfg.cls_token_num, self.device_schedule(labels.device)
        cond = with_null_class(labels, self.model_cfg.num_classes) if sampling.uses_cfg else labels
        setup_kv_caches(self, cond.shape[0], cls_n + self.num_tokens, self.cache_dtype())

        x = self.backbone.cls_embedding(cond)[:, None].expand(-1, cls_n, -1)
        fed = self.feed(x, self.rope[:cls_n], cache_start=0)
        out = labels.new_empty(labels.shape[0], self.num_tokens)
        pos = cls_n
        for s, idx in enumerate(steps):
            new = sample_step(self.step_logits(s, fed), sampling, s, generator)
            out[:, idx] = new
            if s + 1 < len(steps):
                fed_tokens = new.repeat(2, 1) if sampling.uses_cfg else new
                x, rope = self.decode_inputs(s, fed_tokens, idx)
                fed = self.feed(x, rope, cache_start=pos)
                pos += x.shape[1]
        self.train(was_training)
        return out.view(labels.shape[0], *self.grid)
