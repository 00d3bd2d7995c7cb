"""Raster-order next-token prediction (LlamaGen): one token per step, H*W steps."""

from __future__ import annotations

import torch
from torch import Tensor

from nar_bench.checkpoints import Layout, llamagen_key_map
from nar_bench.paradigms.base import visibility_mask
from nar_bench.paradigms.engine import SequenceParadigm
from nar_bench.registry import PARADIGMS


@PARADIGMS.register("ar")
class RasterAR(SequenceParadigm):
    official_layout = Layout(llamagen_key_map)  # LlamaGen's c2i_*.pt

    def schedule(self) -> list[Tensor]:
        return list(torch.arange(self.num_tokens).view(-1, 1))

    def train_mask(self) -> Tensor:
        return visibility_mask(torch.arange(self.num_tokens), self.model_cfg.cls_token_num)  # causal

    def forward(self, tokens: Tensor, labels: Tensor) -> Tensor:
        h = self.hidden_states(tokens, labels)
        start = self.model_cfg.cls_token_num - 1  # the last condition token predicts token 0
        return self.backbone.head(h[:, start : start + self.num_tokens])

    def step_logits(self, step: int, fed: Tensor) -> Tensor:
        return self.backbone.head(fed[:, -1:])

    def official_guided_steps(self, interval: int) -> list[bool]:
        """LlamaGen (``autoregressive/models/generate.py``): the prefill samples token 0 guided, then
        decode iteration i (from 0) samples token i + 1 and drops guidance once i > cfg_interval,
        so tokens 0 .. N + 1 are guided: N + 2 tokens for cfg_interval = N."""
        return [s <= interval + 1 for s in range(self.num_steps)]
