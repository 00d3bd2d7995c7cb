"""Next-neighbour prediction (NAR, arXiv 2503.10696) on H x W image token grids.

Step k produces every token whose coordinates sum to k (h + w = k: one anti-diagonal), so an H x W
grid takes H + W - 1 steps. The training sequence stays [condition, tokens in raster order]; the
proximity mask lets a token at distance k attend to every token of distance <= k (and the
condition). RoPE is 2D (``rope_table``). The schedule, mask and head-source functions below work
on grids of any rank: ``nar_video.py`` builds the authors' T x H x W video model on them.

Heads (``Options.heads``), one per grid axis, each predicting the next token along its axis:
- ``"dimension"`` (the paper's model): the horizontal head is the backbone's norm + output, its
  output at (h, w) predicts (h, w+1); the vertical head is one extra transformer block on the
  backbone's hidden states (before the final norm) plus its own RMSNorm + linear, predicting
  (h+1, w). Each token is predicted by the heads of the neighbours that can reach it (left via
  horizontal, above via vertical); the start token by every head from the condition token. Where
  both heads reach a token (the overlapped region), ``Options.overlap_head`` picks ``"mixed"``
  (mean of their logits; paper default) or one head name (paper Table 5). Tokens reached by one
  head use it; the same rule in training and decoding.
- ``"single"`` (Table 4, "NAR order w/o dimension-oriented heads"): same order, mask and targets,
  but the backbone's output head serves every direction (no extra blocks or parameters).

Logits are a weighted sum over heads ``sum_j weight[j] * head_j(source_j)`` with weights
precomputed per target, so training and decoding share one code path. Decoding runs on the
shared engine (``SequenceParadigm.generate``): one cached forward per step (backbone and head
blocks, each attention with its own KV cache), and the next step's logits gathered from the
tokens just fed, all sampled in one batched call.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nar_bench.checkpoints import Layout, llamagen_key_map
from nar_bench.errors import NarBenchError
from nar_bench.nn.sampling import guided_while_tokens_before_at_most
from nar_bench.nn.transformer import RMSNorm, TransformerBlock, TransformerConfig
from nar_bench.paradigms.base import grid_coords, visibility_mask
from nar_bench.paradigms.engine import SequenceParadigm
from nar_bench.registry import PARADIGMS
from nar_bench.tokenizers.base import CodeSpace

HEADS = ("dimension", "single")
# Head j predicts the next token along grid axis -(j + 1): w, then h, then t.
HEAD_NAMES = ("horizontal", "vertical", "temporal")
OVERLAP_HEADS = ("mixed", *HEAD_NAMES)


@dataclass
class NAROptions:
    heads: str = "dimension"  # "dimension": one head per grid axis | "single": one shared head
    overlap_head: str = "mixed"  # head(s) predicting overlapped tokens: mixed | horizontal | vertical | temporal

    def __post_init__(self) -> None:
        if self.heads not in HEADS:
            raise NarBenchError(f"model.options.heads='{self.heads}' is not valid; choose one of: {', '.join(HEADS)}")
        if self.overlap_head not in OVERLAP_HEADS:
            raise NarBenchError(f"model.options.overlap_head='{self.overlap_head}' is not valid; "
                                f"choose one of: {', '.join(OVERLAP_HEADS)}")


def neighbor_distance(grid: tuple[int, ...]) -> Tensor:
    """(N,) raster-order distance from the start token (sum of coordinates) = the decoding step."""
    return grid_coords(grid).sum(1)


def neighbor_schedule(grid: tuple[int, ...]) -> list[Tensor]:
    """Raster indices (ascending) of the tokens at distance k, for k = 0 .. sum(side - 1)."""
    steps: list[list[int]] = [[] for _ in range(sum(g - 1 for g in grid) + 1)]
    for n, coords in enumerate(itertools.product(*map(range, grid))):  # raster order; works on meta too
        steps[sum(coords)].append(n)
    return [torch.tensor(idx) for idx in steps]


def proximity_mask(grid: tuple[int, ...], cls_token_num: int) -> Tensor:
    """(cls + N, cls + N) bool: a token at distance k sees all tokens at distance <= k."""
    return visibility_mask(neighbor_distance(grid), cls_token_num)


def head_sources(grid: tuple[int, ...], overlap_head: str, cls_token_num: int) -> tuple[Tensor, Tensor]:
    """Which sequence positions predict each raster target, through which head, with which weight.

    Head j (``HEAD_NAMES[j]``) predicts along grid axis -(j+1). Returns ``src`` (N, D) long:
    sequence positions (condition tokens first) whose head-j output predicts the target (its
    predecessor along that axis; the last condition token for the start token); ``weight``
    (N, D) float: 1 / (number of heads used) for the heads used, 0 for the others (their source
    is then a placeholder).
    """
    dims = len(grid)
    if overlap_head not in ("mixed", *HEAD_NAMES[:dims]):
        raise NarBenchError(f"model.options.overlap_head='{overlap_head}' needs a grid axis this {dims}D grid "
                            f"{tuple(grid)} lacks; choose one of: mixed, {', '.join(HEAD_NAMES[:dims])}")
    axes = list(range(dims - 1, -1, -1))  # axis of head j
    strides = torch.tensor([math.prod(grid[a + 1 :]) for a in axes])
    reach = grid_coords(grid)[:, axes] > 0  # (N, D): head j can reach the target from its predecessor
    position = cls_token_num + torch.arange(math.prod(grid))[:, None] - strides
    src = torch.where(reach, position, cls_token_num - 1)
    used = reach.clone()
    if overlap_head != "mixed":
        j = HEAD_NAMES.index(overlap_head)
        chosen = (reach.sum(1) > 1) & reach[:, j]  # overlapped and reachable by the chosen head
        used[chosen] = False
        used[chosen, j] = True
    used[0] = True  # start token: every head on the condition token
    weight = used.float() / used.sum(1, keepdim=True)
    return src, weight


def register_head_sources(model: SequenceParadigm, src: Tensor, weight: Tensor) -> None:
    """Buffers of ``head_sources`` for training (``head_src``, ``head_weight``: (N, D) in raster order)
    and decoding: the same sources as indices into the previous step's fed chunk (distance k-1 in
    schedule order, or the condition chunk for step 0), in decode order so step k's rows are the
    contiguous slice ``decode_offsets[k]:decode_offsets[k+1]``."""
    model.register_buffer("head_src", src, persistent=False)
    model.register_buffer("head_weight", weight, persistent=False)
    schedule = model.schedule()
    rank = torch.empty(model.num_tokens, dtype=torch.long)
    for idx in schedule:
        rank[idx] = torch.arange(len(idx))
    cls_n = model.model_cfg.cls_token_num
    chunk_src = torch.where(src >= cls_n, rank[(src - cls_n).clamp(min=0)], src)
    chunk_src = chunk_src.masked_fill(weight == 0, 0)  # unused sources: any valid chunk row
    order = torch.cat(schedule)
    model.register_buffer("decode_head_src", chunk_src[order], persistent=False)
    model.register_buffer("decode_head_weight", weight[order], persistent=False)
    model.decode_offsets = [0, *itertools.accumulate(len(idx) for idx in schedule)]


def mixed_head_logits(inputs: Sequence[Tensor], projections: Sequence[tuple[nn.Module, Tensor]], src: Tensor,
                      weight: Tensor) -> Tensor:
    """Logits (B, n, V) for n targets: sum_j weight[:, j] * head_j(inputs[j][:, src[:, j]]), head j
    being ``projections[j]`` = (norm, output weight (V, dim)); inputs: one (B, S, dim) tensor per head.

    Every head is linear after its norm, so the weighted sum is one matmul plus one accumulating
    matmul per further head, on weighted features: no per-head logit tensors, which would dominate
    decoding's memory traffic (V = 16384 per token).
    """
    logits = None
    for j, (x, (norm, out_weight)) in enumerate(zip(inputs, projections, strict=True)):
        features = norm(x[:, src[:, j]]) * weight[:, j, None].to(x.dtype)
        if logits is None:
            logits = F.linear(features, out_weight)
        else:
            logits.view(-1, logits.shape[-1]).addmm_(features.flatten(0, 1).to(logits.dtype),
                                                     out_weight.to(logits.dtype).t())
    return logits


def nar_key_map(model: nn.Module) -> dict[str, str]:
    """NAR-images GPT: LlamaGen GPT + vertical block as layers.{L} + medusa_norm / medusa_output."""
    renames = {"vertical_block.": f"layers.{model.model_cfg.n_layers}.",
               "vertical_norm.": "medusa_norm.", "vertical_output.": "medusa_output."}
    mapping = llamagen_key_map(model)  # heads=single has no vertical keys: plain LlamaGen layout
    for k in model.state_dict():
        for ours, official in renames.items():
            if k.startswith(ours):
                mapping[k] = official + k.removeprefix(ours)
    return mapping


@PARADIGMS.register("nar")
class NAR(SequenceParadigm):
    Options = NAROptions
    official_layout = Layout(nar_key_map)
    grid_axes: tuple[str, ...] = ("H", "W")
    other_grids = "for T x H x W video use model.paradigm=nar_video"

    def __init__(self, model: TransformerConfig, codes: CodeSpace, options: NAROptions | None = None):
        dims = len(self.grid_axes)
        if len(codes.grid) != dims:
            raise NarBenchError(f"paradigm '{self.name}' supports {dims}D token grids ({', '.join(self.grid_axes)}); "
                                f"got grid {tuple(codes.grid)}; {self.other_grids}")
        if model.head_dim % (2 * dims):
            raise NarBenchError(f"paradigm '{self.name}' splits RoPE over {dims} axes, so head_dim "
                                f"(model dim / n_heads = {model.head_dim}) must be divisible by {2 * dims}; "
                                "change model.dim or model.n_heads (e.g. dim 96 with 4 heads)")
        super().__init__(model, codes, options)
        self.head_names = HEAD_NAMES[:dims]
        if self.options.heads == "dimension":
            for name in self.head_names[1:]:  # the horizontal head is the backbone's own output
                self.add_axis_head(name, model)

        register_head_sources(self, *head_sources(self.grid, self.options.overlap_head, model.cls_token_num))

    def add_axis_head(self, name: str, model: TransformerConfig) -> None:
        """``{name}_block`` + ``{name}_norm`` + ``{name}_output``: the official checkpoint layout
        of the vertical head (converted to layers.{L} / medusa_norm / medusa_output)."""
        block = TransformerBlock(model)
        for m in block.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)  # as the backbone (LlamaGen init)
        output = nn.Linear(model.dim, model.vocab_size, bias=False)
        nn.init.zeros_(output.weight)  # zero-initialised like the backbone's output layer
        setattr(self, f"{name}_block", block)
        setattr(self, f"{name}_norm", RMSNorm(model.dim, model.norm_eps))
        setattr(self, f"{name}_output", output)

    def schedule(self) -> list[Tensor]:
        return neighbor_schedule(self.grid)

    def train_mask(self) -> Tensor:
        return proximity_mask(self.grid, self.model_cfg.cls_token_num)

    # --- heads ----------------------------------------------------------------------------------
    def head_input(self, name: str, h: Tensor, rope: Tensor, mask: Tensor | None = None,
                   cache_start: int | None = None) -> Tensor:
        """Input of head ``name`` for backbone hidden states h (B, n, dim)."""
        if name == "horizontal" or self.options.heads == "single":
            return h
        return getattr(self, f"{name}_block")(h, rope, mask, cache_start)

    def head_projection(self, name: str) -> tuple[nn.Module, Tensor]:
        """(norm, output weight (V, dim)) of the head predicting the next token along its axis."""
        if name == "horizontal" or self.options.heads == "single":
            return self.backbone.norm, self.backbone.output.weight
        return getattr(self, f"{name}_norm"), getattr(self, f"{name}_output").weight

    def head_output(self, name: str, x: Tensor) -> Tensor:
        """(B, n, dim) -> logits (B, n, V) predicting the next token along the head's axis."""
        norm, weight = self.head_projection(name)
        return F.linear(norm(x), weight)

    def head_inputs(self, h: Tensor, rope: Tensor, mask: Tensor | None = None,
                    cache_start: int | None = None) -> list[Tensor]:
        return [self.head_input(name, h, rope, mask, cache_start) for name in self.head_names]

    def neighbor_logits(self, inputs: Sequence[Tensor], src: Tensor, weight: Tensor) -> Tensor:
        """Logits (B, n, V) for n targets from one (B, S, dim) input per head (``mixed_head_logits``)."""
        return mixed_head_logits(inputs, [self.head_projection(name) for name in self.head_names], src, weight)

    def forward(self, tokens: Tensor, labels: Tensor) -> Tensor:
        h = self.hidden_states(tokens, labels)
        return self.neighbor_logits(self.head_inputs(h, self.rope, self.mask), self.head_src, self.head_weight)

    # --- decoding (the shared engine in SequenceParadigm.generate) ------------------------------
    def feed(self, x: Tensor, rope: Tensor, cache_start: int) -> list[Tensor]:
        h = self.backbone.run_blocks(x, rope, cache_start=cache_start)
        return self.head_inputs(h, rope, cache_start=cache_start)

    def step_logits(self, step: int, fed: list[Tensor]) -> Tensor:
        rows = slice(self.decode_offsets[step], self.decode_offsets[step + 1])
        return self.neighbor_logits(fed, self.decode_head_src[rows], self.decode_head_weight[rows])

    def official_guided_steps(self, interval: int) -> list[bool]:
        """NAR-images ``generate.py``: before each step it compares the tokens generated so far with
        cfg_interval and guides while they number at most N (the prefill step is always guided)."""
        return guided_while_tokens_before_at_most([len(idx) for idx in self.schedule()], interval)
