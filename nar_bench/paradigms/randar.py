"""RandAR (Pang et al., "RandAR: Decoder-only Autoregressive Visual Generation in Random Orders",
CVPR 2025, arXiv 2412.01827) on the shared LLaMA backbone.

A LlamaGen GPT that decodes the N image tokens in any order: before each image token it reads a
*position instruction token*, one learned vector (``pos_instruct_embeddings``, (1, dim)) rotated
per head by the 2D RoPE of the cell to predict next, so the model is told where the next token
goes. Read from the official ``RandAR/model/randar_gpt.py`` (``RandARTransformer``: ``forward_train``,
``get_position_instruction_tokens``, ``generate``) and ``RandAR/model/utils.py``
(``calculate_num_query_tokens_for_parallel_decoding``):

- Training sequence (decode order t = 0..N-1, cell ``order[t]``):
  ``[condition, q_0, x_0, q_1, x_1, .., q_{N-1}, x_{N-1}]`` under the causal mask, q_t the instruction
  token of cell ``order[t]``, x_t its image token; both carry the rotary row of ``order[t]``, the
  condition zero rows (LlamaGen). Hidden state of q_t predicts x_t. Token dropout touches the image
  tokens only. Each sample gets its own random permutation at every training step.
- Decoding (``generate``): ``Options.steps`` steps, step s predicting the next ``step_counts()[s]``
  tokens of the order in parallel (first step one token; then the official cosine rule
  ``1 + N (1 - cos(pi/2 (s+1)/T))`` tokens decoded after step s, at least one a step). Step s feeds
  its instruction tokens q_a..q_{a+n-1} together (causal among themselves) and reads their logits;
  the next step feeds ``[x_a, q_{a+1}, x_{a+1}, .., x_{a+n-1}, next instruction tokens]`` starting
  right after q_a in the KV cache, so the step's non-leading queries are re-fed (over their first
  cache rows) with the tokens just sampled and the cache ends up holding the training sequence.
  One token a step (steps = N) is exactly the training forward; with fewer steps a query does not
  see the tokens sampled in its own step (``parallel_logits`` is that view as one teacher-forced
  forward, the decoding contract's reference).
- CFG: ``RandARTransformer.generate`` guides every step with scale ``start + (end - start) * a / N``
  (a = tokens decoded before the step), from ``cfg_scales=(start, end)``; the sampling scripts seen
  (``sample_c2i.py`` runs in RandAR forks) pass ``--cfg-scales 1.0,<scale>``: a ramp from no guidance
  to the scale. ``cfg_ramp=True``
  is that (end = ``eval.sampling.cfg_scale``), False a constant scale (start = end). Its sampler has
  no cfg_interval.

Decoding runs its own loop on the shared backbone, KV caches and sampler: the shared engine
(``SequenceParadigm.generate``) appends chunks that attend bidirectionally inside themselves, while
RandAR's chunks are causal and start over the previous step's queries; so it has no fused/compiled
decode path (``compiled_decoding`` False) either.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nar_bench.checkpoints import Layout, llamagen_key_map
from nar_bench.errors import NarBenchError
from nar_bench.nn.modes import eval_mode
from nar_bench.nn.noise import RowNoise
from nar_bench.nn.sampling import SamplingConfig, sample_step, with_null_class
from nar_bench.nn.transformer import Attention, TransformerConfig, apply_rope, setup_kv_caches
from nar_bench.paradigms import orders as decoding_orders
from nar_bench.paradigms.base import Paradigm, visibility_mask
from nar_bench.paradigms.engine import SequenceParadigm
from nar_bench.paradigms.orders import AnyOrderDecoding, check_order, random_orders
from nar_bench.registry import PARADIGMS
from nar_bench.tokenizers.base import CodeSpace

ORDERS = (*decoding_orders.ORDERS, "permutation")  # the shared vocabulary (paradigms.orders) + one seeded permutation
RELEASED_STEPS = 88  # the released num_inference_steps (configs/randar/*.yaml) on 16 x 16 tokens
INSTRUCTION_KEY = "pos_instruct_embeddings"


@dataclass
class RandAROptions:
    # The decoding order (training always draws a fresh random permutation per sample, as RandAR
    # trains, so every order decodes the same weights): random (RandAR's sampling) | raster | diagonal |
    # halton | locality (LPD's scheduler over RandAR's step counts, ``repulsion``), see paradigms.orders |
    # permutation: one fixed permutation of the grid, drawn from ``order_seed``, shared by every sample
    order: str = "random"
    order_seed: int = 0
    steps: int = RELEASED_STEPS  # decoding steps: N = one token a step, 2..N-1 parallel (cosine rule)
    cfg_ramp: bool = True  # guidance scale 1 -> cfg_scale over the decoded fraction (released scripts)
    repulsion: int = 2  # locality: cells taken in one step are more than this apart (LPD's released 2)

    def __post_init__(self) -> None:
        check_order(self.order, ORDERS, " (permutation: the fixed order drawn from model.options.order_seed)")
        if self.repulsion < 0:
            raise NarBenchError(f"model.options.repulsion={self.repulsion} is not valid; choose a distance >= 0")


def randar_step_counts(num_tokens: int, steps: int) -> list[int]:
    """Tokens decoded at each of ``steps`` steps over ``num_tokens`` (sum num_tokens): the official
    ``generate`` loop with ``num_inference_steps=steps``. It realises exactly ``steps`` steps for
    every 2 <= steps <= num_tokens (steps = num_tokens: one token a step); anything else raises."""
    if not 2 <= steps <= num_tokens:
        raise NarBenchError(f"model.options.steps={steps} cannot be realised by RandAR's schedule on {num_tokens} "
                            f"tokens: choose 2..{num_tokens} ({num_tokens} = one token a step; the released parallel "
                            f"schedule is {RELEASED_STEPS} on 16x16)")
    counts, done, current = [], 0, 1  # the first step always decodes one token
    while done + current <= num_tokens and current > 0:
        counts.append(current)
        target = min(int((1.0 - math.cos(math.pi / 2.0 * (len(counts) + 1) / steps)) * num_tokens + 1), num_tokens)
        done += current
        current = min(max(target - done, 1), num_tokens - done)
    assert len(counts) == steps and sum(counts) == num_tokens, (steps, counts)
    return counts


def interleave(first: Tensor, second: Tensor) -> Tensor:
    """(B, n, ...) twice -> (B, 2n, ...): first[0], second[0], first[1], second[1], ..."""
    return torch.stack([first, second], dim=2).flatten(1, 2)


def parallel_view_mask(counts: list[int], cls_token_num: int) -> Tensor:
    """(S, S) bool, S = cls + 3N, mask of ``RandAR.parallel_logits``' sequence
    ``[condition, q_0, x_0, .., q_{N-1}, x_{N-1}, r_0, .., r_{N-1}]``: causal over the condition and the
    interleaved part (what the KV cache holds); readout r_t (query t as its step reads it) sees the
    condition, every q/x of earlier steps and the readouts of its own step up to itself."""
    n, c = sum(counts), cls_token_num
    firsts = itertools.accumulate(counts[:-1], initial=0)
    start = torch.tensor([first for first, count in zip(firsts, counts, strict=True) for _ in range(count)])
    mask = torch.zeros(c + 3 * n, c + 3 * n, dtype=torch.bool)
    mask[: c + 2 * n, : c + 2 * n] = visibility_mask(torch.arange(2 * n), c)
    t = torch.arange(n)
    mask[c + 2 * n :, : c + 2 * n] = torch.arange(c + 2 * n)[None, :] < (c + 2 * start)[:, None]
    mask[c + 2 * n :, c + 2 * n :] = (t[None, :] >= start[:, None]) & (t[None, :] <= t[:, None])
    return mask


@contextlib.contextmanager
def dense_attention(module: nn.Module) -> Iterator[None]:
    """Decoding's per-chunk masks through SDPA even where FlexAttention training is switched on
    (it would build and cache a BlockMask per chunk); restored on exit."""
    layers = [m for m in module.modules() if isinstance(m, Attention)]
    saved = [m.flex_masks for m in layers]
    for m in layers:
        m.flex_masks = None
    try:
        yield
    finally:
        for m, flex in zip(layers, saved, strict=True):
            m.flex_masks = flex


def randar_key_map(model: nn.Module) -> dict[str, str]:
    """RandAR GPT (``RandARTransformer`` state dict): LlamaGen GPT + ``pos_instruct_embeddings``
    (1, dim); its ``freqs_cis`` and ``causal_mask`` are plain attributes, not in the file."""
    return llamagen_key_map(model) | {INSTRUCTION_KEY: INSTRUCTION_KEY}


@PARADIGMS.register("randar")
class RandAR(AnyOrderDecoding, SequenceParadigm):
    Options = RandAROptions
    official_layout = Layout(
        randar_key_map,
        hints={INSTRUCTION_KEY: "a RandAR GPT carries its position instruction embedding; a LlamaGen file has "
                                "none: use model.paradigm=ar for it"},
        download="download e.g. randar_0.3b_llamagen_360k_bs_1024_lr_0.0004.safetensors (RandAR-L) from "
                 "ziqipang/RandAR on Hugging Face, re-save its state dict with torch.save, and point "
                 "model.checkpoint at the .pt file")
    fixed_schedule = False  # the released order is a fresh random permutation per sample and call
    decode_options = ("order", "order_seed", "steps", "cfg_ramp", "repulsion")  # training: random orders, 2N mask
    compiled_decoding = False  # causal chunks over re-fed cache rows: no fused step (module docstring)
    compile_decoding = Paradigm.compile_decoding
    tiny_overrides = ("model.options.steps=6",)  # 4 x 4 grid: 1, 2, 2, 3, 4, 4 tokens

    def __init__(self, model: TransformerConfig, codes: CodeSpace, options: RandAROptions | None = None):
        opts = options if options is not None else self.Options()
        self.require_2d_grid(codes)
        counts = randar_step_counts(codes.num_tokens, opts.steps)  # fails before the backbone is built
        super().__init__(model, codes, opts)
        self.counts = counts
        self.starts = list(itertools.accumulate(counts, initial=0))  # decode index of each step's first token
        self.pos_instruct_embeddings = nn.Parameter(torch.randn(1, model.dim) * 0.02)  # official init
        self.register_buffer("parallel_mask", parallel_view_mask(counts, model.cls_token_num), persistent=False)
        self._orders: Tensor | None = None  # (B, N) decode order of the latest generate

    # --- orders and schedule ----------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return len(self.counts)

    def fixed_order(self) -> Tensor | None:
        """(N,) raster index decoded at each decode position for the fixed orders; None for random and
        locality (drawn per sample)."""
        if self.options.order == "permutation":
            return torch.randperm(self.num_tokens, generator=torch.Generator().manual_seed(self.options.order_seed))
        return decoding_orders.fixed_order(self.options.order, self.grid)

    def train_mask(self) -> Tensor:
        """Causal over ``[condition, q_0, x_0, .., q_{N-1}, x_{N-1}]``."""
        return visibility_mask(torch.arange(2 * self.num_tokens), self.model_cfg.cls_token_num)

    # --- model --------------------------------------------------------------------------------------
    def order_rope(self, orders: Tensor) -> Tensor:
        """(B, N, head_dim/2, 2) rotary rows of the cells of ``orders`` (B, N)."""
        return self.rope[self.model_cfg.cls_token_num :][orders]

    def position_instructions(self, rope: Tensor) -> Tensor:
        """(B, n, dim) instruction tokens: ``pos_instruct_embeddings`` split into heads and rotated by
        the target cells' rotary rows ``rope`` (B, n, head_dim/2, 2)."""
        b, n = rope.shape[:2]
        heads = self.model_cfg.n_heads
        x = self.pos_instruct_embeddings.view(1, 1, heads, -1).expand(b, n, -1, -1)
        return apply_rope(x, rope).reshape(b, n, -1)

    def condition(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Condition embeddings (B, cls, dim) and their (zero) rotary rows (B, cls, head_dim/2, 2)."""
        cls_n = self.model_cfg.cls_token_num
        cond = self.backbone.cls_embedding(labels)[:, None].expand(-1, cls_n, -1)
        return cond, self.rope[:cls_n].expand(labels.shape[0], -1, -1, -1)

    def sequence(self, tokens: Tensor, labels: Tensor, orders: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The training sequence of raster ``tokens`` (B, N) decoded in ``orders`` (B, N): inputs
        (B, cls + 2N, dim) and rotary rows, then the instruction tokens and their rows (for readouts)."""
        bb = self.backbone
        rope = self.order_rope(orders)
        queries = self.position_instructions(rope)
        x = bb.tok_dropout(bb.tok_embeddings(tokens.gather(1, orders)))
        cond, cond_rope = self.condition(labels)
        h = torch.cat([cond, interleave(queries, x)], dim=1)
        return h, torch.cat([cond_rope, interleave(rope, rope)], dim=1), queries, rope

    def ordered_forward(self, tokens: Tensor, labels: Tensor, orders: Tensor) -> Tensor:
        """RandAR's training forward: logits (B, N, V) in raster order for tokens (B, N) in ``orders``."""
        h, rope, _, _ = self.sequence(tokens, labels, orders)
        h = self.backbone.run_blocks(h, rope, self.mask)
        logits = self.backbone.head(h[:, self.model_cfg.cls_token_num :: 2])  # q_t predicts x_t
        return logits.gather(1, orders.argsort(1)[..., None].expand(-1, -1, logits.shape[-1]))

    def parallel_logits(self, tokens: Tensor, labels: Tensor, orders: Tensor) -> Tensor:
        """Logits (B, N, V) in raster order as the cached decoding of ``step_counts()`` reads them,
        in one teacher-forced forward: the training sequence plus one readout copy of each query
        (``parallel_view_mask``). Equals ``ordered_forward`` when every step decodes one token."""
        h, rope, queries, query_rope = self.sequence(tokens, labels, orders)
        h = self.backbone.run_blocks(torch.cat([h, queries], dim=1), torch.cat([rope, query_rope], dim=1),
                                     self.parallel_mask)
        logits = self.backbone.head(h[:, -self.num_tokens :])
        return logits.gather(1, orders.argsort(1)[..., None].expand(-1, -1, logits.shape[-1]))

    def forward(self, tokens: Tensor, labels: Tensor) -> Tensor:
        """Teacher-forced logits (B, N, V) under a fresh random order per sample, as RandAR trains
        whatever order it decodes in (so ``order`` is decode-only: one checkpoint, every order)."""
        return self.ordered_forward(tokens, labels, random_orders(tokens.shape[0], self.num_tokens, tokens.device))

    def recorded_orders(self, batch: int) -> Tensor:
        if self._orders is None:
            raise NarBenchError("randar records its decoding order in generate(); call it before forward_at_step()")
        return self._orders.repeat(batch // self._orders.shape[0], 1)

    def forward_at_step(self, tokens: Tensor, labels: Tensor, step: int) -> Tensor:
        """``parallel_logits`` under the latest ``generate``'s orders (the null-class rows of CFG
        share them); the same for every step."""
        return self.parallel_logits(tokens, labels, self.recorded_orders(tokens.shape[0]))

    # --- decoding -----------------------------------------------------------------------------------
    def step_logits(self, step: int, fed: Tensor) -> Tensor:
        return self.backbone.head(fed[:, -self.counts[step] :])

    def step_positions(self, step: int, fed: Tensor) -> Tensor:
        return self._orders[:, self.starts[step] : self.starts[step + 1]]

    def guidance_scale(self, step: int, cfg_scale: float) -> float:
        """Official ``generate``: start + (end - start) * (tokens decoded before the step) / N, with
        (start, end) = (1, cfg_scale) under ``cfg_ramp`` (the released ``--cfg-scales 1.0,<scale>``)."""
        if not self.options.cfg_ramp:
            return cfg_scale
        return 1.0 + (cfg_scale - 1.0) * self.starts[step] / self.num_tokens

    def feed_causal(self, x: Tensor, rope: Tensor, cache_start: int) -> Tensor:
        """Runs a chunk (B', m, dim) into the KV cache at ``cache_start``, causal inside the chunk."""
        m = x.shape[1]
        mask = None  # one row, or the prefill (cache_start 0: the attention is causal by itself)
        if m > 1 and cache_start > 0:
            keys = torch.arange(cache_start + m, device=x.device)
            mask = keys[None, :] <= (cache_start + torch.arange(m, device=x.device))[:, None]
        return self.backbone.run_blocks(x, rope, mask, cache_start=cache_start)

    @torch.inference_mode()
    def generate(self, labels: Tensor, sampling: SamplingConfig,
                 generator: torch.Generator | RowNoise | None = None) -> Tensor:
        with eval_mode(self), dense_attention(self):
            b, n, device = labels.shape[0], self.num_tokens, labels.device
            orders = self.decode_orders(b, device, generator)
            self._orders = orders
            cond = with_null_class(labels, self.model_cfg.num_classes) if sampling.uses_cfg else labels
            rows = cond.shape[0] // b
            rope = self.order_rope(orders).repeat(rows, 1, 1, 1)  # (B', N, head_dim/2, 2)
            queries = self.position_instructions(rope).to(self.cache_dtype())
            setup_kv_caches(self, cond.shape[0], self.model_cfg.cls_token_num + 2 * n, self.cache_dtype())

            cond_x, cond_rope = self.condition(cond)
            x = torch.cat([cond_x.to(queries.dtype), queries[:, :1]], dim=1)
            x_rope = torch.cat([cond_rope, rope[:, :1]], dim=1)
            pos, out = 0, labels.new_empty(b, n)  # out: codes in decode order
            guided = self.guided_steps(sampling)
            for s, count in enumerate(self.counts):
                first, nxt = self.starts[s], self.starts[s + 1]
                fed = self.feed_causal(x, x_rope, pos)
                new = sample_step(self.step_logits(s, fed), sampling, guided[s], generator,
                                  self.guidance_scale(s, sampling.cfg_scale))
                out[:, first:nxt] = new
                if s + 1 == self.num_steps:
                    break
                # The step's queries sit at the chunk's end; restart right after its first one.
                pos += x.shape[1] - count + 1
                tokens = self.backbone.tok_embeddings(new.repeat(rows, 1)).to(queries.dtype)
                step_rope = rope[:, first:nxt]
                later = slice(nxt, self.starts[s + 2])
                x = torch.cat([interleave(queries[:, first:nxt], tokens)[:, 1:], queries[:, later]], dim=1)
                x_rope = torch.cat([interleave(step_rope, step_rope)[:, 1:], rope[:, later]], dim=1)
        codes = out.gather(1, orders.argsort(1))  # back to raster order
        return codes.view(b, *self.grid)
