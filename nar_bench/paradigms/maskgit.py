"""MaskGIT-style masked generation (Chang et al., "MaskGIT: Masked Generative Image Transformer",
arXiv 2202.04200) on the shared LLaMA backbone: the supplement's Table A baseline of NAR.

Model: the LLaMA ``Transformer`` with *bidirectional* attention (no mask) over [condition, tokens
in raster order]; a masked position is fed a learned mask embedding instead of its token's
embedding; RoPE over the token grid as in the other paradigms (zero rows for the condition). The
backbone's output head predicts the token of every masked position. Class-label dropout (the
``LabelEmbedder``) trains the null class for CFG.

Mask schedule gamma(r), r in [0, 1] (``Options.schedule``): ``cosine`` cos(pi/2 r) (MaskGIT's
default) or ``linear`` 1 - r; gamma(0) = 1 (all masked), gamma(1) = 0.

Training (``loss``): per sample r ~ U(0, 1) and ceil(gamma(r) N) positions masked uniformly at
random (at least one); cross-entropy on the masked positions only (the head runs on them alone).

Decoding (``generate``), T = ``Options.steps`` forward passes of the whole sequence (no KV cache:
every step re-reads every position, which is what the latency comparison with NAR is about). At
step s (0-based) all still-masked tokens are sampled at once with the shared sampling (CFG by
batch doubling, temperature, top-k, top-p); each gets the confidence log p(sampled token) under the
(guided) logits before temperature / top-k / top-p (MaskGIT: the model's softmax) plus t_s * Gumbel
noise, t_s = choice_temperature * (1 - (s+1)/T) (MaskGIT's linear annealing, zero at the last
step); the most confident are kept so that floor(N gamma((s+1)/T)) stay masked, and the rest are
masked again. Every step commits at least one
token and the last commits all that remain (``masked_counts``). The head runs on the masked
positions only, as only their logits are used.

Halton order (``Options.order="halton"``; Besnier et al., "Halton Scheduler for Masked Generative Image
Transformer", ICLR 2025; read from valeoai/Maskgit-pytorch ``Sampler/halton_sampler.py``): the positions a
step commits are the next ones of a fixed 2D Halton sequence over the grid instead of the most confident
ones. Matched: the sequence (``orders.halton_order``, shared with randar and lpd: radical inverses from
index 1, base 2 for the row and base 3 for the column, float32 points times the side floored, each cell
at its first occurrence: the official ``build_halton_mask``), one order shared by every sample (the
official default ``randomize=False``) and the values sampled from the model at the committed positions
(no confidence and no Gumbel noise:
``choice_temperature`` plays no part). Not matched, so that the order is the one swept axis: how many cells
a step commits is MaskGIT's mask schedule above (the official sampler unmasks the first
max(s+1, floor(N (1 - arccos((s+1)/T) / (pi/2)))) points by step s), token values follow the shared
sampling (the official one multiplies logits by a linearly interpolated softmax temperature and guides as
(1+w) c - w u), each token is committed once (the official loop re-samples every already unmasked cell at
every step), and the sequence runs until every cell appears (the official one stops at 10,000 points).

Contract for a data-dependent order: *how many* tokens each step commits is fixed (``step_counts``,
``num_steps`` = ``Options.steps``, so step counts and the throughput sweep need no special case);
*which* tokens is decided while decoding, so there is no fixed list of raster indices and
``schedule()`` raises instead of inventing one. ``generate`` records the step at which each token
was committed; ``token_steps(i)`` returns it for sample i of the latest call (the order GIFs).

Size: ``model.size=B`` (LlamaGen's GPT-B backbone: dim 768, 12 layers, 12 heads) with vocab 16384
and 1000 classes has 110,889,216 parameters: the backbone's plus 768 for the mask embedding
(``tests/test_maskgit.py`` asserts it). The supplement's MaskGIT (its own bidirectional transformer)
is 174M.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nar_bench.errors import NarBenchError
from nar_bench.nn.fused_decode import enable_fused_decode
from nar_bench.nn.modes import eval_mode
from nar_bench.nn.noise import RowNoise
from nar_bench.nn.sampling import SamplingConfig, guided_logits, sample, with_null_class
from nar_bench.nn.transformer import Transformer, TransformerConfig, condition_rope, rope_table
from nar_bench.paradigms.base import Paradigm, grid_coords
from nar_bench.paradigms.orders import halton_order
from nar_bench.registry import PARADIGMS
from nar_bench.tokenizers.base import CodeSpace

SCHEDULES = ("cosine", "linear")
ORDERS = ("confidence", "halton")


@dataclass
class MaskGITOptions:
    steps: int = 8  # decoding steps T (MaskGIT: 8 on ImageNet 256)
    schedule: str = "cosine"  # mask schedule gamma: cosine | linear
    # scale of the Gumbel noise on the confidence before annealing: step s gets it times (1 - (s+1)/T),
    # so step 0 already has 4.5 (1 - 1/T) (3.94 at T = 8) and the last step none, as MaskGIT's sampler
    choice_temperature: float = 4.5
    # which masked positions a step commits: confidence (MaskGIT) | halton (a fixed 2D Halton order)
    order: str = "confidence"

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise NarBenchError(f"model.options.order='{self.order}' is not an order of paradigm 'maskgit'; "
                                f"choose one of: {', '.join(ORDERS)}")
        if self.schedule not in SCHEDULES:
            raise NarBenchError(f"model.options.schedule='{self.schedule}' is not valid; "
                                f"choose one of: {', '.join(SCHEDULES)}")
        if self.steps < 1:
            raise NarBenchError(f"model.options.steps={self.steps}: MaskGIT needs at least one decoding step")
        if self.choice_temperature < 0:
            raise NarBenchError(f"model.options.choice_temperature={self.choice_temperature} must be >= 0")


def mask_ratio(progress: Tensor, schedule: str) -> Tensor:
    """gamma(r): fraction of tokens masked at progress r in [0, 1] (any shape), 1 at r=0, 0 at r=1."""
    if schedule == "cosine":
        return torch.cos(math.pi / 2 * progress)
    if schedule == "linear":
        return 1 - progress
    raise NarBenchError(f"unknown mask schedule '{schedule}'; choose one of: {', '.join(SCHEDULES)}")


def masked_counts(num_tokens: int, steps: int, schedule: str) -> list[int]:
    """Tokens still masked after each of ``steps`` decoding steps: floor(N gamma((s+1)/T)), kept
    below the previous count (every step commits at least one token) and at least T-1-s (every later
    step has one to commit); the last entry is 0. Needs 1 <= steps <= N."""
    if not 1 <= steps <= num_tokens:
        raise NarBenchError(f"model.options.steps={steps} must be between 1 and the {num_tokens} tokens of the grid "
                            "(every step commits at least one token)")
    progress = torch.arange(1, steps + 1, dtype=torch.float64, device="cpu") / steps  # also under a meta device
    targets = torch.floor(num_tokens * mask_ratio(progress, schedule)).long().tolist()
    counts, remaining = [], num_tokens
    for s, target in enumerate(targets):
        remaining = max(steps - 1 - s, min(remaining - 1, target))
        counts.append(remaining)
    return counts


def gumbel_noise(like: Tensor, generator: torch.Generator | RowNoise | None = None) -> Tensor:
    """Standard Gumbel samples (float32, shaped like ``like`` (B, ...)) as -log(Exp(1)), drawn with
    ``generator`` as every other decoding draw (``nn/sampling.py``; a RowNoise: per-sample seeds)."""
    if isinstance(generator, RowNoise):
        race = generator.exponential(tuple(like.shape))
    else:
        race = torch.empty(like.shape, dtype=torch.float32, device=like.device).exponential_(1, generator=generator)
    return -race.clamp_min(torch.finfo(torch.float32).tiny).log()


def sampled_log_prob(logits: Tensor, ids: Tensor) -> Tensor:
    """log softmax(logits)[ids]: logits (..., V), ids (...) -> (...) float32, without a (..., V) softmax."""
    logits = logits.float()
    return logits.gather(-1, ids[..., None]).squeeze(-1) - logits.logsumexp(-1)


class DecodeState(NamedTuple):
    """What one decoding step reads: codes and mask (B, N) (committed codes; a placeholder where still
    masked), condition labels (B'), and the raster indices still masked (B, m)."""

    tokens: Tensor
    masked: Tensor
    cond: Tensor
    pending: Tensor


@PARADIGMS.register("maskgit")
class MaskGIT(Paradigm):
    Options = MaskGITOptions
    fixed_schedule = False  # confidence decides which tokens each step commits
    # training masks follow ``schedule`` (``training_mask``), never the step count, order or temperature
    decode_options = ("order", "steps", "choice_temperature")
    compiled_decoding = True

    def __init__(self, model: TransformerConfig, codes: CodeSpace, options: MaskGITOptions | None = None):
        super().__init__(model, codes, options)
        opt = self.options
        self.masked_after = masked_counts(self.num_tokens, opt.steps, opt.schedule)  # fails before building
        order = halton_order(self.grid) if opt.order == "halton" else None
        self.backbone = Transformer(model)
        self.mask_embedding = nn.Parameter(torch.randn(model.dim) * 0.02)  # LlamaGen's init std
        rope = condition_rope(rope_table(grid_coords(self.grid), model.head_dim, model.rope_base), model.cls_token_num)
        self.register_buffer("rope", rope, persistent=False)  # (cls + N, head_dim/2, 2), raster order
        self.register_buffer("halton", order, persistent=False)  # (N,) raster indices, or None
        self._token_steps: Tensor | None = None  # (B, N) recorded by the latest generate

    # --- schedule -------------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return self.options.steps

    def step_counts(self) -> list[int]:
        """Tokens committed at each decoding step (sum N), the same for every sample."""
        before = [self.num_tokens, *self.masked_after[:-1]]
        return [b - a for b, a in zip(before, self.masked_after, strict=True)]

    def choice_temperatures(self) -> list[float]:
        """Gumbel scale t_s of the confidence at each step: choice_temperature * (1 - (s+1)/T)."""
        t = self.options.steps
        return [self.options.choice_temperature * (1 - (s + 1) / t) for s in range(t)]

    def schedule(self) -> list[Tensor]:
        raise NarBenchError("maskgit chooses the positions of each step while decoding: it has no fixed raster "
                            "schedule; step_counts() gives how many tokens each step commits, token_steps() which "
                            "ones the latest generate committed when")

    def token_steps(self, sample: int = 0) -> Tensor:
        if self._token_steps is None:
            raise NarBenchError("maskgit records its decoding order in generate(); call it before token_steps()")
        return self._token_steps[sample].cpu()

    def train_mask(self) -> Tensor:
        """Bidirectional: every position sees every position (attention runs without a mask)."""
        s = self.model_cfg.cls_token_num + self.num_tokens
        return torch.ones(s, s, dtype=torch.bool)

    # --- model ------------------------------------------------------------------------------------
    def hidden_states(self, tokens: Tensor, labels: Tensor, masked: Tensor) -> Tensor:
        """Backbone output (B, cls + N, dim) for tokens (B, N) with ``masked`` (B, N) bool positions
        replaced by the mask embedding; labels (B,)."""
        bb, cls_n = self.backbone, self.model_cfg.cls_token_num
        x = bb.tok_embeddings(tokens)
        x = torch.where(masked[..., None], self.mask_embedding.to(x.dtype), x)
        cond = bb.cls_embedding(labels)[:, None].expand(-1, cls_n, -1)
        return bb.run_blocks(bb.tok_dropout(torch.cat([cond, x], dim=1)), self.rope)

    def forward(self, tokens: Tensor, labels: Tensor, masked: Tensor | None = None) -> Tensor:
        """Logits (B, N, V) of every raster position for tokens (B, N) with ``masked`` (B, N) bool
        positions hidden; ``masked=None`` hides all of them (the first decoding step's input)."""
        if masked is None:
            masked = torch.ones_like(tokens, dtype=torch.bool)
        h = self.hidden_states(tokens, labels, masked)
        return self.backbone.head(h[:, self.model_cfg.cls_token_num :])

    def training_mask(self, batch: int, device: torch.device | str,
                      generator: torch.Generator | None = None) -> Tensor:
        """(B, N) bool: per row ceil(gamma(r) N) positions (at least one) chosen uniformly, r ~ U(0, 1)."""
        n = self.num_tokens
        r = torch.rand(batch, device=device, generator=generator)
        count = torch.ceil(mask_ratio(r, self.options.schedule) * n).long().clamp(1, n)
        rank = torch.rand(batch, n, device=device, generator=generator).argsort(1).argsort(1)  # random permutation
        return rank < count[:, None]

    def loss(self, tokens: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy on the masked positions of a fresh ``training_mask`` only."""
        masked = self.training_mask(tokens.shape[0], tokens.device)
        h = self.hidden_states(tokens, labels, masked)[:, self.model_cfg.cls_token_num :]
        return F.cross_entropy(self.backbone.head(h[masked]).float(), tokens[masked])

    # --- decoding ---------------------------------------------------------------------------------
    def masked_logits(self, tokens: Tensor, masked: Tensor, cond: Tensor, pending: Tensor) -> Tensor:
        """One decoding forward over the whole sequence: logits (B', m, V) of the m masked positions
        ``pending`` (B, m) raster indices, for tokens / masked (B, N) and condition labels cond (B',)
        (B' = 2B under CFG: the token state is shared by the conditional and null-class rows)."""
        rows = cond.shape[0] // tokens.shape[0]
        h = self.hidden_states(tokens.repeat(rows, 1), cond, masked.repeat(rows, 1))
        index = (self.model_cfg.cls_token_num + pending).repeat(rows, 1)
        return self.backbone.head(h.gather(1, index[..., None].expand(-1, -1, h.shape[-1])))

    def step_logits(self, step: int, fed: DecodeState) -> Tensor:
        """``masked_logits`` of the step's state: logits (B', m, V) of the positions still masked."""
        return self.masked_logits(*fed)

    def step_positions(self, step: int, fed: DecodeState) -> Tensor:
        return fed.pending

    def forward_at_step(self, tokens: Tensor, labels: Tensor, step: int) -> Tensor:
        """``forward`` with every token committed at ``step`` or later (latest ``generate``) masked."""
        if self._token_steps is None:
            raise NarBenchError("maskgit records its decoding order in generate(); call it before forward_at_step()")
        masked = self._token_steps >= step
        return self(tokens, labels, masked.repeat(tokens.shape[0] // masked.shape[0], 1))

    def compile_decoding(self) -> bool:
        """Runs every block of the decoding forward through the shared fused regions
        (``nar_bench.nn.fused_decode``: norm + QKV + RoPE, then wo + norm + SwiGLU + residuals, with
        SDPA between), compiled once for all blocks, steps, batch sizes and paradigms: the rows
        (batch x sequence) are their one dynamic dim. Safe to call twice."""
        enable_fused_decode(self, compile=True)
        return True

    @torch.inference_mode()
    def generate(self, labels: Tensor, sampling: SamplingConfig, generator: torch.Generator | None = None) -> Tensor:
        """Codes (B, *grid) for labels (B,) in ``num_steps`` parallel steps (module docstring). Shapes
        are static per step and nothing syncs with the host, so it can be captured in a CUDA graph."""
        with eval_mode(self):
            return self._generate(labels, sampling, generator)

    def _generate(self, labels: Tensor, sampling: SamplingConfig, generator: torch.Generator | None) -> Tensor:
        b, n, device = labels.shape[0], self.num_tokens, labels.device
        cond = with_null_class(labels, self.model_cfg.num_classes) if sampling.uses_cfg else labels
        tokens = labels.new_zeros(b, n)  # committed codes; a placeholder 0 where still masked
        masked = torch.ones(b, n, dtype=torch.bool, device=device)
        # (B, m) raster indices still masked; under the Halton order in that order, so a step commits its first ones
        pending = (torch.arange(n, device=device) if self.halton is None else self.halton).expand(b, n)
        token_steps = labels.new_full((b, n), -1)
        guided = self.guided_steps(sampling)
        for s, (keep, temperature) in enumerate(zip(self.step_counts(), self.choice_temperatures(), strict=True)):
            state = DecodeState(tokens, masked, cond, pending)
            logits = guided_logits(self.step_logits(s, state), sampling, guided[s])  # (B, m, V)
            ids = sample(logits, sampling.temperature, sampling.top_k, sampling.top_p, generator)  # (B, m)
            if self.halton is None:
                confidence = sampled_log_prob(logits, ids)
                if temperature > 0:
                    confidence = confidence + temperature * gumbel_noise(confidence, generator)
                order = confidence.argsort(dim=1, descending=True)
            else:
                order = torch.arange(pending.shape[1], device=device).expand(b, -1)
            chosen, positions = order[:, :keep], pending.gather(1, order[:, :keep])
            tokens.scatter_(1, positions, ids.gather(1, chosen))
            masked.scatter_(1, positions, False)
            token_steps.scatter_(1, positions, s)
            pending = pending.gather(1, order[:, keep:])
        self._token_steps = token_steps
        return tokens.view(b, *self.grid)
