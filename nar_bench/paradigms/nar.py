"""Next-neighbour prediction (NAR, arXiv 2503.10696) on an H x W token grid.

Step k produces every token (h, w) with h + w = k (one anti-diagonal), so a grid takes H + W - 1
steps. The training sequence stays [condition, tokens in raster order]; the proximity mask lets a
token at distance k attend to every token of distance <= k (and the condition).

Heads (``Options.heads``):
- ``"dimension"`` (the paper's model): the horizontal head is the backbone's norm + output, its
  output at (h, w) predicts (h, w+1); the vertical head is one extra transformer block on the
  backbone's hidden states (before the final norm) plus its own RMSNorm + linear, predicting
  (h+1, w). Targets: (0,0) from the condition token, mean of both heads; first row from the
  horizontal head of the left neighbour; first column from the vertical head of the upper
  neighbour; interior tokens (h>0, w>0) can be predicted by both, ``Options.overlap_head`` picks
  ``"mixed"`` (mean of the two logits), ``"horizontal"`` or ``"vertical"`` (paper Table 5), the
  same rule in training and decoding.
- ``"single"`` (Table 4, "NAR order w/o dimension-oriented heads"): same order and mask, but one
  head, the backbone's output head, predicts every neighbour: its output at (h, w) serves both
  the right target (h, w+1) and the lower target (h+1, w). Each token is therefore predicted
  exactly as with dimension heads, with the vertical head replaced by the shared head (no extra
  block or parameters): edges from their only neighbour, interior per ``overlap_head`` (mixed =
  mean of the shared head's logits at the left and upper neighbours).

Logits are a weighted sum ``w_h * horizontal(left source) + w_v * vertical(upper source)`` with
weights in {0, 0.5, 1} precomputed per target, so training and decoding share one code path.
Decoding runs on the shared engine (``SequenceParadigm.generate``): one cached forward per
anti-diagonal (backbone and vertical block, each attention with its own KV cache), and the next
anti-diagonal's logits gathered from the tokens just fed, all sampled in one batched call.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nar_bench.errors import NarBenchError
from nar_bench.nn.transformer import RMSNorm, TransformerBlock, TransformerConfig
from nar_bench.paradigms.base import SequenceParadigm, visibility_mask
from nar_bench.registry import PARADIGMS

HEADS = ("dimension", "single")
OVERLAP_HEADS = ("mixed", "horizontal", "vertical")


@dataclass
class NAROptions:
    heads: str = "dimension"  # "dimension": horizontal + vertical head | "single": one shared head
    overlap_head: str = "mixed"  # head(s) predicting interior tokens: mixed | horizontal | vertical

    def __post_init__(self) -> None:
        if self.heads not in HEADS:
            raise NarBenchError(f"model.options.heads='{self.heads}' is not valid; choose one of: {', '.join(HEADS)}")
        if self.overlap_head not in OVERLAP_HEADS:
            raise NarBenchError(f"model.options.overlap_head='{self.overlap_head}' is not valid; "
                                f"choose one of: {', '.join(OVERLAP_HEADS)}")


def neighbor_distance(grid: tuple[int, int]) -> Tensor:
    """(H*W,) raster-order distance h + w from the start token (0, 0) = the decoding step."""
    rows, cols = torch.arange(grid[0]), torch.arange(grid[1])
    return (rows[:, None] + cols[None, :]).flatten()


def neighbor_schedule(grid: tuple[int, int]) -> list[Tensor]:
    """Raster indices of anti-diagonal k (h + w = k, ascending h) for k = 0 .. H+W-2."""
    H, W = grid
    rows = [torch.arange(max(0, k - W + 1), min(k, H - 1) + 1) for k in range(H + W - 1)]
    return [h * W + (k - h) for k, h in enumerate(rows)]


def proximity_mask(grid: tuple[int, int], cls_token_num: int) -> Tensor:
    """(cls + H*W, cls + H*W) bool: a token at distance k sees all tokens at distance <= k."""
    return visibility_mask(neighbor_distance(grid), cls_token_num)


def head_sources(grid: tuple[int, int], overlap_head: str, cls_token_num: int) -> tuple[Tensor, Tensor]:
    """Which sequence positions predict each raster target, and with which weight.

    Returns ``src`` (N, 2) long: sequence positions (condition tokens first) whose horizontal /
    vertical head output predicts the target (the last condition token for (0, 0)); ``weight``
    (N, 2) float in {0, 0.5, 1} for the two heads (0 where the head does not predict the target,
    its source is then a placeholder).
    """
    H, W = grid
    n = torch.arange(H * W)
    h, w = n // W, n % W
    cond = cls_token_num - 1
    src = torch.stack([torch.where(w > 0, cls_token_num + n - 1, cond),
                       torch.where(h > 0, cls_token_num + n - W, cond)], dim=1)
    interior = (h > 0) & (w > 0)  # overlapped region: both neighbours exist
    overlap = {"mixed": (0.5, 0.5), "horizontal": (1.0, 0.0), "vertical": (0.0, 1.0)}[overlap_head]
    weight = torch.stack([(w > 0).float(), (h > 0).float()], dim=1)  # first row / first column
    weight[interior] = torch.tensor(overlap)
    weight[0] = 0.5  # (0, 0): mean of both heads on the condition token
    return src, weight


@PARADIGMS.register("nar")
class NAR(SequenceParadigm):
    name = "nar"
    Options = NAROptions

    def __init__(self, model: TransformerConfig, grid: tuple[int, int], options: NAROptions | None = None):
        if len(grid) != 2:
            raise NarBenchError(f"NAR supports 2D token grids (H, W); got grid {tuple(grid)}")
        super().__init__(model, grid, options)
        if self.options.heads == "dimension":
            self.vertical_block = TransformerBlock(model)
            self.vertical_norm = RMSNorm(model.dim, model.norm_eps)
            self.vertical_output = nn.Linear(model.dim, model.vocab_size, bias=False)
            for m in self.vertical_block.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)  # as the backbone (LlamaGen init)
            nn.init.zeros_(self.vertical_output.weight)  # zero-initialised like the output layer

        src, weight = head_sources(self.grid, self.options.overlap_head, model.cls_token_num)
        self.register_buffer("head_src", src, persistent=False)  # (N, 2) training-sequence positions
        self.register_buffer("head_weight", weight, persistent=False)  # (N, 2)
        # Decoding: the same sources as indices into the previous step's fed chunk (anti-diagonal
        # k-1 in schedule order, or the condition chunk for step 0), laid out in decode order so
        # step k's rows are the contiguous slice decode_offsets[k]:decode_offsets[k+1].
        schedule = self.schedule()
        rank = torch.empty(self.num_tokens, dtype=torch.long)
        for idx in schedule:
            rank[idx] = torch.arange(len(idx))
        cls_n = model.cls_token_num
        chunk_src = torch.where(src >= cls_n, rank[(src - cls_n).clamp(min=0)], src)
        chunk_src = chunk_src.masked_fill(weight == 0, 0)  # unused sources: any valid chunk row
        order = torch.cat(schedule)
        self.register_buffer("decode_head_src", chunk_src[order], persistent=False)
        self.register_buffer("decode_head_weight", weight[order], persistent=False)
        self.decode_offsets = [0, *itertools.accumulate(len(idx) for idx in schedule)]

    def schedule(self) -> list[Tensor]:
        return neighbor_schedule(self.grid)

    def train_mask(self) -> Tensor:
        return proximity_mask(self.grid, self.model_cfg.cls_token_num)

    # --- heads ----------------------------------------------------------------------------------
    def vertical_hidden(self, h: Tensor, rope: Tensor, mask: Tensor | None = None,
                        cache_start: int | None = None) -> Tensor:
        """Input of the vertical head for backbone hidden states h (B, n, dim)."""
        if self.options.heads == "single":
            return h
        return self.vertical_block(h, rope, mask, cache_start)

    def vertical_projection(self) -> tuple[nn.Module, Tensor]:
        """(norm, output weight (V, dim)) of the head predicting the token below."""
        if self.options.heads == "single":
            return self.backbone.norm, self.backbone.output.weight
        return self.vertical_norm, self.vertical_output.weight

    def vertical_head(self, v: Tensor) -> Tensor:
        """(B, n, dim) -> logits (B, n, V) predicting the token below each position."""
        norm, weight = self.vertical_projection()
        return F.linear(norm(v), weight)

    def neighbor_logits(self, h: Tensor, v: Tensor, src: Tensor, weight: Tensor) -> Tensor:
        """Logits (B, n, V) for n targets: weight[:, 0] * horizontal head at h[:, src[:, 0]]
        + weight[:, 1] * vertical head at v[:, src[:, 1]]. h, v: (B, S, dim).

        Both heads are linear after their norms, so the weighted sum is one matmul plus one
        accumulating matmul on weighted features: no per-head logit tensors, which would dominate
        decoding's memory traffic (V = 16384 per token).
        """
        vertical_norm, vertical_weight = self.vertical_projection()
        xh = self.backbone.norm(h[:, src[:, 0]]) * weight[:, 0, None].to(h.dtype)
        xv = vertical_norm(v[:, src[:, 1]]) * weight[:, 1, None].to(v.dtype)
        logits = self.backbone.output(xh)
        flat = logits.view(-1, logits.shape[-1])
        flat.addmm_(xv.flatten(0, 1).to(logits.dtype), vertical_weight.to(logits.dtype).t())
        return logits

    def forward(self, tokens: Tensor, labels: Tensor) -> Tensor:
        h = self.hidden_states(tokens, labels)
        v = self.vertical_hidden(h, self.rope, self.mask)
        return self.neighbor_logits(h, v, self.head_src, self.head_weight)

    # --- decoding (the shared engine in SequenceParadigm.generate) ------------------------------
    def feed(self, x: Tensor, rope: Tensor, cache_start: int) -> tuple[Tensor, Tensor]:
        h = self.backbone.run_blocks(x, rope, cache_start=cache_start)
        return h, self.vertical_hidden(h, rope, cache_start=cache_start)

    def step_logits(self, step: int, fed: tuple[Tensor, Tensor]) -> Tensor:
        rows = slice(self.decode_offsets[step], self.decode_offsets[step + 1])
        return self.neighbor_logits(*fed, self.decode_head_src[rows], self.decode_head_weight[rows])
