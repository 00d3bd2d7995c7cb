"""The one interface every generation paradigm implements (the shared KV-cache decode engine of
the LLaMA-backbone paradigms is ``nar_bench.paradigms.engine``).

A paradigm is built from (model config, code space, options): the code space is the tokenizer's
(``nar_bench.tokenizers.base.CodeSpace``: vocabulary, layout, grid or scales), so a paradigm never
reaches into the tokenizer. It is defined by its schedule, the list of code positions produced at
each decoding step; the training mask, the decode loop and the step count derive from it.
``generate`` returns codes in the code space's own layout, which the tokenizer decodes.
A paradigm whose positions are chosen while decoding (MaskGIT) has no such list: it overrides
``num_steps`` and ``token_steps`` and its ``schedule()`` raises.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nar_bench.checkpoints import Layout
from nar_bench.nn.sampling import SamplingConfig, guided_steps
from nar_bench.nn.transformer import TransformerConfig
from nar_bench.tokenizers.base import CodeSpace


@dataclass
class NoOptions:
    """Paradigms without options of their own."""


class Paradigm(nn.Module, ABC):
    """Generator over a grid of discrete tokens, conditioned on a class label.

    ``name`` (the config string) is set by ``PARADIGMS.register``; subclasses with options set
    ``Options`` (a dataclass; its fields are the valid keys of ``model.options``).
    """

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    # Training dropouts of the paradigm's released recipe, used where model.*_dropout is null:
    # LlamaGen's GPT (and NAR, PAR on it) trains with 0.1 on tokens, residuals, FFN and labels.
    default_dropouts: ClassVar[dict[str, float]] = {
        "token_dropout": 0.1, "resid_dropout": 0.1, "ffn_dropout": 0.1, "class_dropout": 0.1}
    # How the released checkpoint maps onto the module (nar_bench.checkpoints); None: no official one
    official_layout: ClassVar[Layout | None] = None

    def __init__(self, model: TransformerConfig, codes: CodeSpace, options: Any = None):
        super().__init__()
        self.model_cfg = model
        self.codes = codes
        self.grid = codes.grid
        self.options = options if options is not None else self.Options()

    @property
    def num_tokens(self) -> int:
        """Codes per sample (prod(grid) for raster codes, sum of scale^2 for multi-scale ones)."""
        return self.codes.num_tokens

    @abstractmethod
    def schedule(self) -> list[Tensor]:
        """Raster indices (into the flattened grid) of the tokens produced at each decoding step."""

    @property
    def num_steps(self) -> int:
        return len(self.schedule())

    def token_steps(self, sample: int = 0) -> Tensor:
        """(N,) decoding step at which each raster token of sample ``sample`` of the latest
        ``generate`` call was produced (what the order GIFs draw). Fixed orders: the same for every
        sample, from ``schedule()``; data-dependent orders (MaskGIT) override it with what
        ``generate`` recorded."""
        return step_of_positions(self.schedule(), self.num_tokens)

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

    def compile_decoding(self) -> bool:
        """Hook: compiles what decoding runs per step (the bench's ``bench.compile``); returns
        whether it did. A paradigm without a compiled path keeps eager decoding (False)."""
        return False

    @abstractmethod
    def generate(self, labels: Tensor, sampling: SamplingConfig, generator: torch.Generator | None = None) -> Tensor:
        """Samples codes for ``labels`` (B,) in the code space's layout: (B, *grid) for raster codes,
        (B, num_tokens) for multi-scale ones. Restores train/eval mode on return."""

    def official_guided_steps(self, interval: int) -> list[bool] | None:
        """Per decoding step, whether the paradigm's official sampling script guides it when given
        ``cfg_interval=interval`` (>= 0); None when that script has no interval."""
        return None

    def guided_steps(self, sampling: SamplingConfig) -> list[bool]:
        """Per decoding step, whether CFG applies under ``sampling`` (``nn.sampling.guided_steps``)."""
        return guided_steps(sampling, self.num_steps, self.official_guided_steps)


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
