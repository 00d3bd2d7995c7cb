"""LPD (Zhang et al., "Locality-aware Parallel Decoding for Efficient Autoregressive Image
Generation", ICLR 2026, arXiv 2507.01957): flexible parallelized autoregression with position
queries, decoded in LPD's locality-aware order.

Read from the official mit-han-lab/lpd: ``models/lpd.py`` (``LPD.forward``, ``forward_decoder``,
``sample_tokens``, ``lpd_l/xl/xxl``), ``models/block.py`` (timm-style ``Block`` with a KV cache),
``models/mask.py`` (``generate_mask_mod``), ``orders/lpd_order.py`` (``lpd_order_schedule``),
``orders/group_sizes_lookup.json``, ``engine.py`` (``evaluate``, ``create_block_causal_mask``),
``main.py`` and ``scripts/{train,eval}``:

- Model: not the LLaMA backbone but MAR's decoder: ``class_emb`` (C classes) + ``fake_latent`` (the
  null class), ``token_emb``, a learned ``pos_embed`` (1, N + 1, dim) (row 0: the class token,
  row 1 + i: cell i), ``z_proj_ln`` (LayerNorm on every input), pre-norm ViT blocks
  (``nar_bench.nn.vit``), ``norm`` and a bias-free ``head``.
- Position queries: ``mask_token`` + the target cell's ``pos_embed`` row (then ``z_proj_ln``) asks
  for the token at that cell; a step feeds one query per token it predicts.
- Training sequence for a decode order and group sizes g_0 = 1, .., g_{T-1}:
  ``[class, tokens of groups 0..T-2 in order, queries of all N tokens in order]``; a context token sees
  the class and the tokens of its own and earlier groups; a query of group j sees the class, the
  tokens of groups < j and the queries of group j (bidirectionally: "mutual visibility"); queries
  hidden states predict their cells. Each sample a fresh random order; each training step one
  schedule drawn from the step table (``group_sizes_training/group_sizes_256.json``, every entry).
- Decoding (``sample_tokens``): step s feeds ``[tokens of group s-1, queries of group s]`` into the
  KV cache at cache rows 1 + (tokens before group s-1) onwards, so the tokens overwrite the cache
  rows their queries held; block-causal mask over blocks [class, group 0, group 1, ..]. This is
  exactly the training forward under the same order and group sizes (the decoding contract).
- Step schedule: a lookup table (``group_sizes_lookup.json``), no formula: 16x16 tokens decode in
  8, 12, 16, 20, 24, 32, 64, 128 or 256 steps (20 released), 32x32 in 48 (released) or 1024. Other
  token counts (tiny test grids) take the 16x16 table rescaled (first step one token, the remaining
  cumulative fractions rounded, every step at least one token) and one token a step.
- Orders (the shared vocabulary of ``nar_bench.paradigms.orders``): ``locality`` =
  ``lpd_order_schedule`` (proximity threshold 1, ``repulsion`` 2 as the released 256-px orders files,
  ``nar_bench.paradigms.orders.locality_orders``), drawn per sample as
  the official pre-generated orders files are; ``random`` (``--order random``); ``raster``, ``diagonal``
  and ``halton`` are fixed orders added for the order sweep (issue #31), not in the official code.
- CFG (``cfg_schedule="linear"``, every released script): token t of the decode order (t from 0) is
  guided with 1 + (cfg - 1) * t / N, a per-token ramp inside each step; ``cfg_ramp=False`` is the
  official ``constant``. The null class is ``fake_latent``; training drops labels with p = 0.1.
- Dropout: attention-output and MLP dropout 0.1 (``proj_dropout``); the official ``attn_drop`` is
  unused on its fused-attention path; no token dropout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nar_bench.checkpoints import Layout
from nar_bench.errors import NarBenchError
from nar_bench.nn.modes import eval_mode
from nar_bench.nn.noise import RowNoise
from nar_bench.nn.sampling import SamplingConfig, sample_step, with_null_class
from nar_bench.nn.transformer import TransformerConfig, drop_labels, setup_kv_caches
from nar_bench.nn.vit import LAYER_NORM_EPS, ViTBlock
from nar_bench.paradigms.base import Paradigm
from nar_bench.paradigms.orders import AnyOrderDecoding, check_order, random_orders
from nar_bench.registry import PARADIGMS
from nar_bench.tokenizers.base import CodeSpace

RELEASED_STEPS = 20  # scripts/eval/lpd_*_res256_steps20.sh
RELEASED_REPULSION = 2  # orders/run_lpd_order.sh: res256_steps{20,32}_repulsion2.json (512 px: 4)

# orders/group_sizes_lookup.json: tokens per step, keyed by token count, then step count
GROUP_SIZES: dict[int, dict[int, tuple[int, ...]]] = {
    256: {
        256: (1,) * 256,
        128: (1,) * 41 + (2,) * 46 + (3,) * 41,
        64: (1,) * 10 + (2,) * 7 + (3,) * 7 + (4,) * 9 + (5,) * 11 + (6,) * 20,
        32: (1, 1, 2, 2, 3, 3, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 10, 11, 11, 11, 11) + (12,) * 8,
        24: (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11, 12, 13, 14, 14, 14, 15, 15, 16, 16, 16, 17, 17),
        20: (1, 2, 4, 5, 7, 8, 10, 11, 12, 14, 15, 16, 17, 18, 18, 19, 19, 20, 20, 20),
        16: (1, 4, 6, 8, 11, 13, 15, 17, 19, 20, 22, 23, 24, 24, 24, 25),
        12: (1, 7, 11, 15, 19, 22, 25, 28, 30, 32, 33, 33),
        8: (1, 15, 24, 32, 40, 45, 49, 50),
    },
    1024: {  # the released 512-px evaluation count and one token a step
        1024: (1,) * 1024,
        48: (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 23, 24, 25, 26, 26,
             27, 28, 28, 29, 29, 30, 30, 31, 31, 32, 32, 32, 33, 33, 33, 33, 33, 33, 33, 34),
    },
}


def rescaled_group_sizes(num_tokens: int, table: tuple[int, ...]) -> list[int] | None:
    """The 16x16 ``table`` moved to ``num_tokens``: one token first, then the cumulative fractions of
    the rest rounded; None when a step would get no token."""
    done, total, cum = 0, sum(table[1:]), [1]
    for size in table[1:]:
        done += size
        cum.append(1 + math.floor((num_tokens - 1) * done / total + 0.5))
    sizes = [1] + [b - a for a, b in zip(cum, cum[1:], strict=False)]
    return sizes if min(sizes) >= 1 else None


def group_size_table(num_tokens: int) -> dict[int, list[int]]:
    """{steps: tokens per step} realisable on ``num_tokens`` tokens."""
    if num_tokens in GROUP_SIZES:
        return {steps: list(sizes) for steps, sizes in GROUP_SIZES[num_tokens].items()}
    rescaled = {steps: rescaled_group_sizes(num_tokens, sizes) for steps, sizes in GROUP_SIZES[256].items()
                if steps < num_tokens}
    return {steps: sizes for steps, sizes in rescaled.items() if sizes is not None} | {num_tokens: [1] * num_tokens}


def lpd_group_sizes(num_tokens: int, steps: int) -> list[int]:
    """Tokens decoded at each of ``steps`` steps (first one token); raises for a count the table lacks."""
    table = group_size_table(num_tokens)
    if steps not in table:
        valid = ", ".join(map(str, sorted(table)))
        raise NarBenchError(f"model.options.steps={steps} cannot be realised by LPD's step table on {num_tokens} "
                            f"tokens: choose one of {valid} (released: {RELEASED_STEPS} on 16x16)")
    return table[steps]


def step_of_index(counts: list[int]) -> Tensor:
    """(N,) step of each decode index (built from Python ints: works on the meta device too)."""
    return torch.tensor([s for s, count in enumerate(counts) for _ in range(count)], dtype=torch.long)


def group_mask(counts: list[int]) -> Tensor:
    """(S, S) bool training mask, S = 1 + (N - counts[-1]) + N, over ``[class, context tokens, queries]``
    (``models/mask.py``): context sees its own and earlier groups, a query group the class, the tokens
    of earlier groups and itself."""
    step = step_of_index(counts)
    context = torch.cat([torch.zeros(1, dtype=torch.long), step[: -counts[-1]] + 1])  # class: 0, group k: k + 1
    queries = step
    ctx_rows = context[None, :] <= context[:, None]
    return torch.cat([
        torch.cat([ctx_rows, torch.zeros(len(context), len(queries), dtype=torch.bool)], dim=1),
        torch.cat([context[None, :] <= queries[:, None], queries[None, :] == queries[:, None]], dim=1),
    ])


@dataclass
class LPDOptions:
    # locality: LPD's scheduler, a fresh order per sample and call (the released sampling) | random |
    # raster | diagonal | halton (fixed orders: the same for every sample), see paradigms.orders
    order: str = "locality"
    steps: int = RELEASED_STEPS  # an entry of LPD's step table (16x16: 8, 12, 16, 20, 24, 32, 64, 128, 256)
    repulsion: int = RELEASED_REPULSION  # locality: cells taken in one step are more than this apart (Chebyshev)
    cfg_ramp: bool = True  # guidance 1 -> cfg_scale over the decode position of each token (cfg_schedule=linear)

    def __post_init__(self) -> None:
        check_order(self.order)
        if self.repulsion < 0:
            raise NarBenchError(f"model.options.repulsion={self.repulsion} is not valid; choose a distance >= 0 "
                                f"(released: {RELEASED_REPULSION})")


@PARADIGMS.register("lpd")
class LPD(AnyOrderDecoding, Paradigm):
    Options = LPDOptions
    # main.py: --attn_dropout / --proj_dropout 0.1 (attention dropout unused by fused attention), --label_drop_prob 0.1
    default_dropouts = {"token_dropout": 0.0, "resid_dropout": 0.1, "ffn_dropout": 0.1, "class_dropout": 0.1}
    official_layout = Layout(
        hints={r"pos_embed": "token grid differs: lpd_*_256 files are 16x16 tokens (data.grid_size=16), "
                             "lpd_*_512 32x32",
               r"class_emb\.weight": "number of classes differs (ImageNet: 1000)",
               r"token_emb\.weight|head\.weight": "vocabulary differs: LPD uses LlamaGen's VQ-16 (16384 codes)"},
        download="download e.g. lpd_l_256.pth from mit-han-lab/lpd_l_256 on Hugging Face and point "
                 "model.checkpoint at it")
    fixed_schedule = False  # the released order is drawn per sample and call
    # training draws random orders and a schedule of the whole step table whatever these say
    decode_options = ("order", "steps", "repulsion", "cfg_ramp")
    tiny_overrides = ("model.options.steps=8",)  # 4 x 4 grid: 1, 1, 1, 2, 3, 2, 3, 3 tokens

    def __init__(self, model: TransformerConfig, codes: CodeSpace, options: LPDOptions | None = None):
        opts = options if options is not None else self.Options()
        self.require_2d_grid(codes)
        counts = lpd_group_sizes(codes.num_tokens, opts.steps)  # fails before the model is built
        super().__init__(model, codes, opts)
        n, dim = codes.num_tokens, model.dim
        self.counts = counts
        self.starts = [sum(counts[:s]) for s in range(len(counts) + 1)]  # decode index of each step's first token
        self.class_emb = nn.Embedding(model.num_classes, dim)
        self.token_emb = nn.Embedding(model.vocab_size, dim)
        self.fake_latent = nn.Parameter(torch.zeros(1, dim))  # the null class
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, dim))
        self.z_proj_ln = nn.LayerNorm(dim, eps=1e-6)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))  # the position query before its position
        self.blocks = nn.ModuleList(ViTBlock(dim, model.n_heads, 4.0, model.resid_dropout, model.ffn_dropout)
                                    for _ in range(model.n_layers))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(dim, model.vocab_size, bias=False)
        self.reset_parameters()
        self.register_buffer("mask", group_mask(counts), persistent=False)
        blocks = torch.cat([torch.zeros(1, dtype=torch.long), step_of_index(counts) + 1])
        self.register_buffer("cache_blocks", blocks, persistent=False)  # block of each KV-cache row
        self._train_masks: dict[tuple[int, ...], Tensor] = {}
        self._orders: Tensor | None = None  # (B, N) decode order of the latest generate

    def reset_parameters(self) -> None:
        """``LPD.initialize_weights``: embeddings and learned vectors N(0, 0.02), linear weights
        Xavier-uniform with zero biases, LayerNorms 1 / 0."""
        for p in (self.class_emb.weight, self.token_emb.weight, self.fake_latent, self.mask_token, self.pos_embed):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # --- orders and schedule ----------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return len(self.counts)

    def train_mask(self) -> Tensor:
        """The training mask of the decoding schedule (``group_mask``)."""
        return group_mask(self.counts)

    def mask_for(self, counts: list[int]) -> Tensor:
        if list(counts) == self.counts:
            return self.mask
        key = tuple(counts)
        if key not in self._train_masks:
            self._train_masks[key] = group_mask(counts).to(self.mask.device)
        return self._train_masks[key]

    # --- model --------------------------------------------------------------------------------------
    def class_embedding(self, labels: Tensor) -> Tensor:
        """(B, dim): ``class_emb`` rows, ``fake_latent`` for the null class (label ``num_classes``);
        training drops labels to it with ``class_dropout``."""
        num_classes = self.model_cfg.num_classes
        if self.training and self.model_cfg.class_dropout > 0:
            labels = drop_labels(labels, num_classes, self.model_cfg.class_dropout)
        null = labels == num_classes
        emb = self.class_emb(labels.masked_fill(null, 0))
        return torch.where(null[:, None], self.fake_latent.to(emb.dtype), emb)

    def context_inputs(self, labels: Tensor | None, tokens: Tensor, cells: Tensor) -> Tensor:
        """``z_proj_ln(embedding + pos_embed)`` of the class (when ``labels`` (B,) is given) followed by
        ``tokens`` (B, n) at raster ``cells`` (B, n): (B, [1 +] n, dim)."""
        x = self.token_emb(tokens) + self.pos_embed[0, cells + 1]
        if labels is not None:
            cond = self.class_embedding(labels) + self.pos_embed[0, 0]
            x = torch.cat([cond[:, None].to(x.dtype), x], dim=1)
        return self.z_proj_ln(x)

    def queries(self, cells: Tensor) -> Tensor:
        """(B, n, dim) position queries of raster ``cells`` (B, n)."""
        return self.z_proj_ln(self.mask_token + self.pos_embed[0, cells + 1])

    def run_blocks(self, h: Tensor, mask: Tensor, cache_start: int | None = None) -> Tensor:
        for block in self.blocks:
            h = block(h, mask, cache_start)
        return h

    def logits(self, h: Tensor) -> Tensor:
        return self.head(self.norm(h))

    def ordered_forward(self, tokens: Tensor, labels: Tensor, orders: Tensor, counts: list[int]) -> Tensor:
        """LPD's training forward: logits (B, N, V) in raster order for tokens (B, N) decoded in
        ``orders`` (B, N) with ``counts`` tokens per step."""
        context = orders[:, : self.num_tokens - counts[-1]]
        h = torch.cat([self.context_inputs(labels, tokens.gather(1, context), context), self.queries(orders)], dim=1)
        h = self.run_blocks(h, self.mask_for(counts))
        logits = self.logits(h[:, -self.num_tokens :])  # decode order
        return logits.gather(1, orders.argsort(1)[..., None].expand(-1, -1, logits.shape[-1]))

    def training_counts(self) -> list[int]:
        """Training draws one schedule of the step table per step (main.py: ``random.choice`` over
        ``group_sizes_training``); evaluation forwards use the decoding schedule."""
        if not self.training:
            return self.counts
        table = list(group_size_table(self.num_tokens).values())
        return table[int(torch.randint(len(table), ()))]

    def forward(self, tokens: Tensor, labels: Tensor) -> Tensor:
        """Teacher-forced logits (B, N, V) under a fresh random order per sample (LPD trains on
        random orders whatever order it decodes in)."""
        orders = random_orders(tokens.shape[0], self.num_tokens, tokens.device)
        return self.ordered_forward(tokens, labels, orders, self.training_counts())

    def forward_at_step(self, tokens: Tensor, labels: Tensor, step: int) -> Tensor:
        """The training forward under the latest ``generate``'s orders (the null-class rows of CFG
        share them) and schedule; the same for every step."""
        if self._orders is None:
            raise NarBenchError("lpd records its decoding order in generate(); call it before forward_at_step()")
        orders = self._orders.repeat(tokens.shape[0] // self._orders.shape[0], 1)
        return self.ordered_forward(tokens, labels, orders, self.counts)

    # --- decoding -----------------------------------------------------------------------------------
    def step_logits(self, step: int, fed: Tensor) -> Tensor:
        return self.logits(fed[:, -self.counts[step] :])

    def step_positions(self, step: int, fed: Tensor) -> Tensor:
        return self._orders[:, self.starts[step] : self.starts[step + 1]]

    def guidance_scale(self, step: int, cfg_scale: float) -> Tensor | float:
        """``cfg_schedule="linear"``: (n, 1) scales 1 + (cfg - 1) * t / N of the step's tokens, t their
        decode index; ``constant``: ``cfg_scale``."""
        if not self.options.cfg_ramp:
            return cfg_scale
        t = torch.arange(self.starts[step], self.starts[step + 1], dtype=torch.float32)
        return (1.0 + (cfg_scale - 1.0) * t / self.num_tokens)[:, None]

    @torch.inference_mode()
    def generate(self, labels: Tensor, sampling: SamplingConfig,
                 generator: torch.Generator | RowNoise | None = None) -> Tensor:
        with eval_mode(self):
            b, n, device = labels.shape[0], self.num_tokens, labels.device
            orders = self.decode_orders(b, device, generator)
            self._orders = orders
            cond = with_null_class(labels, self.model_cfg.num_classes) if sampling.uses_cfg else labels
            rows = cond.shape[0] // b
            cells = orders.repeat(rows, 1)
            dtype = self.cache_dtype()
            setup_kv_caches(self, cond.shape[0], 1 + n, dtype)
            out, guided = labels.new_empty(b, n), self.guided_steps(sampling)  # out: codes in decode order
            for s in range(self.num_steps):
                first, nxt = self.starts[s], self.starts[s + 1]
                if s == 0:  # the class token (cache row 0) with the first queries
                    start, context = 0, self.context_inputs(cond, cells[:, :0], cells[:, :0])
                else:  # the previous step's tokens over its queries' cache rows, then this step's queries
                    prev = slice(self.starts[s - 1], first)
                    start = 1 + prev.start
                    context = self.context_inputs(None, out[:, prev].repeat(rows, 1), cells[:, prev])
                x = torch.cat([context, self.queries(cells[:, first:nxt])], dim=1).to(dtype)
                end = start + x.shape[1]
                blocks = self.cache_blocks[:end]
                fed = self.run_blocks(x, blocks[None, :] <= blocks[start:end, None], cache_start=start)
                scale = self.guidance_scale(s, sampling.cfg_scale)
                out[:, first:nxt] = sample_step(self.step_logits(s, fed), sampling, guided[s], generator,
                                                scale.to(device) if isinstance(scale, Tensor) else scale)
        codes = out.gather(1, orders.argsort(1))  # back to raster order
        return codes.view(b, *self.grid)
