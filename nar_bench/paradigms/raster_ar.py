"""Raster-order next-token prediction (LlamaGen): one token per step, H*W steps.

``model.options.order=zipar`` decodes the same weights with ZipAR (``paradigms.zipar``): several rows at
a time, row r + 1 starting once row r holds ``model.options.zipar_window`` tokens, 2 W + (H - 2) window
steps. It is decode-only: training (``loss``) is the raster objective whatever the order, so a raster
checkpoint decodes with either order unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nar_bench.checkpoints import Layout, llamagen_key_map
from nar_bench.errors import NarBenchError
from nar_bench.nn.sampling import guided_while_tokens_before_at_most
from nar_bench.nn.transformer import TransformerConfig
from nar_bench.paradigms.base import visibility_mask
from nar_bench.paradigms.engine import SequenceParadigm
from nar_bench.paradigms.zipar import check_window, decode_visibility, zipar_plan
from nar_bench.registry import PARADIGMS
from nar_bench.tokenizers.base import CodeSpace

ORDERS = ("raster", "zipar")


@dataclass
class RasterAROptions:
    order: str = "raster"  # decoding order: raster | zipar (decode-only, same weights)
    zipar_window: int = 8  # ZipAR: row r + 1 starts once row r holds this many tokens (official default 8)

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise NarBenchError(f"model.options.order='{self.order}' is not an order of paradigm 'ar'; "
                                f"choose one of: {', '.join(ORDERS)}")


@PARADIGMS.register("ar")
class RasterAR(SequenceParadigm):
    Options = RasterAROptions
    decode_options = ("order", "zipar_window")  # ``loss`` is the raster objective whatever the order
    official_layout = Layout(llamagen_key_map)  # LlamaGen's c2i_*.pt

    def __init__(self, model: TransformerConfig, codes: CodeSpace, options: RasterAROptions | None = None):
        opt = options if options is not None else self.Options()
        if opt.order == "zipar":
            check_window(codes.grid, opt.zipar_window)  # fails before the backbone is built
        super().__init__(model, codes, options)
        self.plan = zipar_plan(self.grid, opt.zipar_window) if opt.order == "zipar" else None
        if self.plan is not None:
            self._register_zipar_buffers()

    def _register_zipar_buffers(self) -> None:
        """The teacher-forced ZipAR sequence (inputs in feed order, their rotary slots, the visibility
        mask) and, per decoding step, the rows of that mask its fed chunk attends with."""
        cls_n, plan = self.model_cfg.cls_token_num, self.plan
        sources = [src for step in plan.feeds for src, _ in step]
        slots = torch.tensor([slot for step in plan.feeds for _, slot in step], dtype=torch.long)
        visible = decode_visibility(plan, cls_n)
        # Row producing each raster token in that sequence: the last condition token for step 0, else
        # the input at its predecessor's slot fed after the step before (the last ones fed, in order).
        producer = torch.empty(self.num_tokens, dtype=torch.long)
        producer[plan.steps[0]] = cls_n - 1
        offset = cls_n
        self.step_masks: dict[int, int] = {}  # cache_start -> end of the fed chunk, for chunks that need a mask
        for k, fed in enumerate(plan.feeds):
            n = len(plan.steps[k + 1])
            producer[plan.steps[k + 1]] = torch.arange(offset + len(fed) - n, offset + len(fed))
            if not visible[offset : offset + len(fed), : offset + len(fed)].all():
                self.step_masks[offset] = offset + len(fed)
            offset += len(fed)
        self.register_buffer("zipar_sources", torch.tensor(sources, dtype=torch.long), persistent=False)
        self.register_buffer("zipar_slots", slots, persistent=False)
        self.register_buffer("zipar_mask", visible, persistent=False)
        self.register_buffer("zipar_producer", producer, persistent=False)

    def schedule(self) -> list[Tensor]:
        if self.plan is not None:
            return [torch.tensor(step) for step in self.plan.steps]
        return list(torch.arange(self.num_tokens).view(-1, 1))

    def step_feeds(self) -> list[tuple[Tensor, Tensor]]:
        if self.plan is None:
            return super().step_feeds()
        return [(torch.tensor([s for s, _ in fed]), torch.tensor([p for _, p in fed])) for fed in self.plan.feeds]

    def train_mask(self) -> Tensor:
        return visibility_mask(torch.arange(self.num_tokens), self.model_cfg.cls_token_num)  # causal

    def raster_logits(self, tokens: Tensor, labels: Tensor) -> Tensor:
        """Teacher-forced raster logits (B, N, V): the training objective of either order."""
        h = self.hidden_states(tokens, labels)
        start = self.model_cfg.cls_token_num - 1  # the last condition token predicts token 0
        return self.backbone.head(h[:, start : start + self.num_tokens])

    def forward(self, tokens: Tensor, labels: Tensor) -> Tensor:
        """Teacher-forced logits (B, N, V) as the decoding order sees the tokens: raster (the causal
        mask), or ZipAR's inputs in feed order under ``zipar.decode_visibility``."""
        if self.plan is None:
            return self.raster_logits(tokens, labels)
        bb, cls_n = self.backbone, self.model_cfg.cls_token_num
        cond = bb.cls_embedding(labels)[:, None].expand(-1, cls_n, -1)
        h = bb.tok_dropout(torch.cat([cond, bb.tok_embeddings(tokens[:, self.zipar_sources])], dim=1))
        positions = torch.cat([torch.arange(cls_n, device=tokens.device), cls_n + self.zipar_slots])
        h = bb.run_blocks(bb.add_positions(h, positions), self.rope_rows(positions), self.zipar_mask)
        return bb.head(h[:, self.zipar_producer])

    def loss(self, tokens: Tensor, labels: Tensor) -> Tensor:
        logits = self.raster_logits(tokens, labels)
        return F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())

    def feed(self, x: Tensor, rope: Tensor | None, cache_start: int) -> Any:
        """Cached forward of a fed chunk; under ZipAR with the rows of ``zipar.decode_visibility`` it
        attends with (a view of a buffer: no copy, so a CUDA graph can capture it)."""
        end = self.step_masks.get(cache_start) if self.plan is not None else None
        mask = None if end is None else self.zipar_mask[cache_start:end, :end]
        return self.backbone.run_blocks(x, rope, mask, cache_start=cache_start)

    def step_logits(self, step: int, fed: Tensor) -> Tensor:
        n = 1 if self.plan is None else len(self.plan.steps[step])
        return self.backbone.head(fed[:, -n:])

    def official_guided_steps(self, interval: int) -> list[bool]:
        """LlamaGen (``autoregressive/models/generate.py``): the prefill samples token 0 guided, then
        decode iteration i (from 0) samples token i + 1 and drops guidance once i > cfg_interval,
        so tokens 0 .. N + 1 are guided: N + 2 tokens for cfg_interval = N.
        ZipAR (``generate_zipar.py``): row 0 as LlamaGen; its ZipAR loop then starts a fresh count of
        the tokens it has generated and guides each step while that count is at most cfg_interval."""
        if self.plan is None:
            return [s <= interval + 1 for s in range(self.num_steps)]
        w = self.grid[1]
        rest = guided_while_tokens_before_at_most([len(step) for step in self.plan.steps[w:]], interval)
        return [s <= interval + 1 for s in range(w)] + rest
