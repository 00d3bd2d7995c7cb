"""PAR-style region-parallel autoregression (Wang et al., "Parallelized Autoregressive Visual
Generation", arXiv 2412.15119) on the shared LLaMA backbone.

The H x W grid is cut into n = s*s regions (s x s layout, numbered in raster order), each of
R = H*W/n tokens in raster order inside the region. Decoding:

- steps 0 .. n-1: the initial token of each region, one at a time (conventional AR);
- steps n .. n+R-2: one token per region in parallel, all at the same relative position.

Step count: ``n + R - 1 = n + H*W/n - 1``. 16x16: 4 regions -> 4 + 63 = 67 (the paper's PAR-4x),
16 regions -> 16 + 15 = 31; 24x24 (384px): 147 and 51; 8x8: 19 for both 4 and 16 regions.

The n-1 learnable transition tokens add inputs, not steps: the first parallel step needs n
queries but only one real token (the last initial one) is new, so that token is fed together with
the n-1 transition tokens in one forward, and those n outputs predict the first parallel group.

Training sequence (decode order, as PAR's gpt.py lays it out):
``[condition, initial tokens of regions 0..n-1, transition 1..n-1, group 1, .., group R-2]``
(group j = token j of every region; the last group predicts nothing and is not fed). Hidden
state ``cls-1+t`` predicts decode-order target t; ``forward`` permutes the logits back to raster
order. Mask: condition visible to all; the initial tokens are causal; the chunk [last initial
token, transition tokens] and each later group see each other bidirectionally; causal across
groups, which is exactly what the KV-cached decoder sees when it feeds one chunk per step.

Positions: image tokens use the rotary row of their own grid cell; transition tokens get zero
rotary rows like the condition tokens (official PAR and LlamaGen convention).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from nar_bench.checkpoints import PAR_TRANSITION_KEY, Layout, llamagen_key_map
from nar_bench.errors import NarBenchError
from nar_bench.nn.transformer import TransformerConfig
from nar_bench.paradigms.base import visibility_mask
from nar_bench.paradigms.engine import SequenceParadigm
from nar_bench.registry import PARADIGMS
from nar_bench.tokenizers.base import CodeSpace


def region_layout(grid: tuple[int, ...], regions: int) -> Tensor:
    """(regions, tokens_per_region) raster indices: row k lists region k's tokens in raster order
    inside the region; regions are numbered in raster order over the s x s region grid."""
    side = math.isqrt(max(regions, 0))
    if len(grid) != 2 or regions < 1 or side * side != regions or grid[0] % side or grid[1] % side:
        raise NarBenchError(
            f"model.options.regions={regions} does not split the grid {'x'.join(map(str, grid))}: PAR needs a "
            "2D grid and a square region count whose side divides both grid sides (4 = 2x2, 16 = 4x4)"
        )
    h, w = grid
    rh, rw = h // side, w // side
    if rh * rw < 2:
        raise NarBenchError(f"model.options.regions={regions} leaves one token per region of the grid {h}x{w}; "
                            "PAR needs at least two, use fewer regions")
    raster = torch.arange(h * w).view(side, rh, side, rw)  # (region row, row in region, region col, col in region)
    return raster.permute(0, 2, 1, 3).reshape(regions, rh * rw)


def par_key_map(model: nn.Module) -> dict[str, str]:
    """PAR GPT (PAR-XL-4x.pt, PAR-3B-16x.pt, ...): LlamaGen GPT + the n-1 transition tokens, which
    PAR's gpt.py keeps as an embedding table of ``spe_token_num`` = n-1 rows."""
    return llamagen_key_map(model) | {"transition_tokens": PAR_TRANSITION_KEY}


def check_par(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    if PAR_TRANSITION_KEY not in state:
        raise NarBenchError(
            f"no transition tokens under '{PAR_TRANSITION_KEY}' in the checkpoint (is it a LlamaGen, not a PAR, "
            "checkpoint?); load_par_checkpoint(..., transition_key=<name>) reads files that store them elsewhere")
    rows = state[PAR_TRANSITION_KEY].shape[0]
    if rows != model.num_regions - 1:
        raise NarBenchError(f"the checkpoint has {rows} transition tokens, i.e. {rows + 1} regions, but "
                            f"model.options.regions={model.num_regions}; set model.options.regions={rows + 1}")


@PARADIGMS.register("par")
class PAR(SequenceParadigm):
    official_layout = Layout(par_key_map, check=check_par,
                             download="download e.g. PAR-XL-4x.pt from the PAR release and point model.checkpoint "
                                      "at it")

    @dataclass
    class Options:
        regions: int = 4  # 4 = 2x2 regions (PAR-4x), 16 = 4x4 regions (PAR-16x)

    def __init__(self, model: TransformerConfig, codes: CodeSpace, options: Any = None):
        # Fail on a bad region count before the backbone is built.
        region_layout(codes.grid, (options if options is not None else self.Options()).regions)
        super().__init__(model, codes, options)
        n, cls_n = self.num_regions, model.cls_token_num
        self.transition_tokens = nn.Parameter(torch.randn(n - 1, model.dim) * 0.02)  # LlamaGen's init std
        order = torch.cat(self.schedule())  # decode order -> raster index
        self.register_buffer("raster_rank", torch.argsort(order), persistent=False)
        self.register_buffer("input_order", order[: self.num_tokens - n], persistent=False)
        grid_rope = self.rope[cls_n + self.input_order]
        rope = torch.cat([self.rope[:cls_n], grid_rope[:n], self.transition_rope(), grid_rope[n:]])
        self.register_buffer("sequence_rope", rope, persistent=False)  # rows of the training sequence

    @property
    def num_regions(self) -> int:
        return self.options.regions

    def schedule(self) -> list[Tensor]:
        layout = region_layout(self.grid, self.num_regions)
        return list(layout[:, :1]) + list(layout[:, 1:].T)

    def train_mask(self) -> Tensor:
        n, r = region_layout(self.grid, self.num_regions).shape
        # The decoding step each input's hidden state predicts: initial tokens 0..n-2 predict steps
        # 1..n-1, the chunk [last initial token, n-1 transition tokens] step n, group g step n+g.
        groups = torch.arange(n + 1, n + r - 1).repeat_interleave(n)
        seq_steps = torch.cat([torch.arange(1, n), torch.full((n,), n), groups])
        return visibility_mask(seq_steps, self.model_cfg.cls_token_num)

    def transition_rope(self) -> Tensor:
        return self.rope.new_zeros(self.num_regions - 1, *self.rope.shape[1:])

    def forward(self, tokens: Tensor, labels: Tensor) -> Tensor:
        n, cls_n, bb = self.num_regions, self.model_cfg.cls_token_num, self.backbone
        cond = bb.cls_embedding(labels)[:, None].expand(-1, cls_n, -1)
        x = bb.tok_embeddings(tokens[:, self.input_order])
        transition = self.transition_tokens.expand(tokens.shape[0], -1, -1)
        h = bb.tok_dropout(torch.cat([cond, x[:, :n], transition, x[:, n:]], dim=1))
        h = bb.run_blocks(h, self.sequence_rope, self.mask)
        logits = bb.head(h[:, cls_n - 1 : cls_n - 1 + self.num_tokens])  # decode order
        return logits[:, self.raster_rank]

    def decode_inputs(self, step: int, tokens: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        x, rope = super().decode_inputs(step, tokens, idx)
        if step != self.num_regions - 1:
            return x, rope
        # Switch to parallel mode: the last initial token goes in with the transition tokens.
        transition = self.transition_tokens.expand(x.shape[0], -1, -1)
        return torch.cat([x, transition], dim=1), torch.cat([rope, self.transition_rope()])

    def step_logits(self, step: int, fed: Tensor) -> Tensor:
        width = 1 if step < self.num_regions else self.num_regions
        return self.backbone.head(fed[:, -width:])

    def official_guided_steps(self, interval: int) -> list[bool]:
        """PAR's ``generate``: the prefill samples step 0 guided; the sequential loop over the other
        initial tokens counts i = 0, 1, .. (step i + 1) and stops guiding once i > cfg_interval; the
        parallel loop starts a fresh counter at 0 that grows by n (regions) per step, so guidance is
        back on for its first step and lasts while j * n <= cfg_interval (parallel step j).
        Read from the loop as PAR-derived repositories carry it (PAR3D, ResTok ``generate_multi``):
        the PAR repository's own file is not in the reference index."""
        n, region = region_layout(self.grid, self.num_regions).shape
        sequential = [s == 0 or s - 1 <= interval for s in range(n)]
        return sequential + [j * n <= interval for j in range(region - 1)]
