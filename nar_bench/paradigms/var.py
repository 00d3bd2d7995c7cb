"""VAR-style next-scale prediction: all tokens of one scale per step, coarse to fine.

The code sequence is the msvq tokenizer's: per-scale token maps concatenated coarse to fine,
L = sum pn^2 tokens (680 for the paper's 10 scales, 341 for the synthetic 1,2,4,8,16). Position n of
the sequence predicts code n. The first scale's positions hold the start token (class embedding +
``pos_start``); every later scale's positions hold the f_hat of all coarser scales, downsampled to
that scale's side and embedded by ``word_embed``; ``lvl_embed`` (scale id) and ``pos_1LC`` (absolute
position) are added to all. Attention is block-causal over scales, and every block is AdaLN
conditioned on the class (``nar_bench.nn.adaln``). Parameter names follow VAR's ``models/var.py``.

VAR is built on a multi-scale code space (``tokenizer.name=msvq``): its scales fix the sequence,
and its ``next_scale`` (the tokenizer's codebook and phi convs) builds the next scale's inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from nar_bench.checkpoints import Layout
from nar_bench.errors import NarBenchError
from nar_bench.nn.adaln import AdaLNBeforeHead, AdaLNSelfAttn, fused_adaln_decode
from nar_bench.nn.modes import eval_mode
from nar_bench.nn.sampling import SamplingConfig, sample_step, with_null_class
from nar_bench.nn.transformer import TransformerConfig, drop_labels, setup_kv_caches
from nar_bench.paradigms.base import Paradigm, visibility_mask
from nar_bench.registry import PARADIGMS
from nar_bench.tokenizers.base import MULTISCALE, CodeSpace
from nar_bench.tokenizers.msvq import scale_bounds


@dataclass
class VAROptions:
    # Guidance grows linearly from none at the first scale to ``cfg_scale`` at the last (VAR). Our
    # cfg_scale is uncond + s * (cond - uncond), so VAR's ``cfg=1.5`` is ``cfg_scale=2.5`` here.
    cfg_ramp: bool = True
    attn_l2_norm: bool = True  # VAR's released models use it
    drop_path: float | None = None  # stochastic depth at the last block; None = VAR's 0.1 * depth / 24


def var_buffers(var: nn.Module) -> dict[str, Tensor]:
    """The buffers VAR's own ``load_state_dict(strict=True)`` expects: level ids, the additive
    attention mask and each block's zero k-bias."""
    bias = torch.zeros(var.mask.shape).masked_fill(~var.mask.cpu(), float("-inf"))
    buffers = {"lvl_1L": var.lvl_1L.view(1, -1).clone(), "attn_bias_for_masking": bias[None, None]}
    for i, block in enumerate(var.blocks):
        buffers[f"blocks.{i}.attn.zero_k_bias"] = torch.zeros_like(block.attn.q_bias)
    return buffers


VAR_HINTS = {
    r"pos_1LC|lvl_embed\.weight|pos_start": "token count / scales differ: official checkpoints use "
                                           "tokenizer.options.scales=[1,2,3,4,5,6,8,10,13,16]",
    r"class_emb\.weight": "number of classes + 1 null class differs (ImageNet: 1000)",
    r"head\.(weight|bias)": "vocabulary differs: the official msvq codebook has 4096 codes",
    r"word_embed\.weight": "latent channels differ: set tokenizer.options.z_channels to the checkpoint's",
    r"blocks\.\d+\.attn\.scale_mul_1H11": "attention l2-norm setting differs: set model.options.attn_l2_norm "
                                          "(true for the released checkpoints)",
    r"blocks\..*|head_nm\..*": "width or depth differs: VAR width is 64 * depth; use model.size=d<depth>",
}


@PARADIGMS.register("var")
class VAR(Paradigm):
    """Next-scale prediction with AdaLN blocks. Width ``model.dim`` (VAR: 64 * depth), heads
    ``model.n_heads`` (VAR: depth), MLP ratio 4. Dropouts from the model config: class_dropout =
    label dropout, resid_dropout = attention output, ffn_dropout = MLP output; unset, they default
    to VAR's recipe (``default_dropouts``: 0, 0 and label dropout 0.1); token_dropout is unused.
    VAR's sampler has no cfg_interval: ``cfg_schedule=official`` with an interval is refused."""

    Options = VAROptions
    code_layout = MULTISCALE
    compiled_decoding = True
    # a tiny msvq: 16 px images -> 8 x 8 latent (downsample 2), scales 1, 2, 4, 8 (85 codes, 4 steps)
    tiny_overrides = ("tokenizer.name=msvq", "tokenizer.options.ch=8", "tokenizer.options.ch_mult=[1,2]",
                      "tokenizer.options.norm_groups=4", "tokenizer.options.vocab_size=32",
                      "tokenizer.options.z_channels=8", "tokenizer.options.scales=[1,2,4,8]",
                      "tokenizer.untrained=true", "data.grid_size=8")
    # var_d{16,20,24,30}.pth use VAR's own parameter names; the buffers VAR rebuilds are not loaded
    official_layout = Layout(derived=r"lvl_1L|attn_bias_for_masking|blocks\.\d+\.attn\.zero_k_bias",
                             official_buffers=var_buffers, hints=VAR_HINTS,
                             download="download var_d{16,20,24,30}.pth from the VAR release (Hugging Face, "
                                      "FoundationVision/var) and point model.checkpoint at it")
    # VAR's models/var.py: drop_rate = attn_drop_rate = 0, cond_drop_rate 0.1 (stochastic depth is
    # Options.drop_path); token_dropout has no counterpart here.
    default_dropouts = {"token_dropout": 0.0, "resid_dropout": 0.0, "ffn_dropout": 0.0, "class_dropout": 0.1}

    def __init__(self, model: TransformerConfig, codes: CodeSpace, options: Any = None):
        if codes.layout != MULTISCALE or codes.next_scale is None:
            raise NarBenchError(f"VAR predicts next scales and needs a multi-scale code space, but the tokenizer's "
                                f"codes are {codes.layout}; use tokenizer.name=msvq (see experiments/var_demo.yaml)")
        super().__init__(model, codes, options)
        opt = self.options
        self.scales = codes.scales
        self._next_scale = (codes.next_scale,)  # a tuple keeps the tokenizer out of parameters / state dict
        self.scale_bounds = scale_bounds(self.scales)  # [begin, end) of each scale in the sequence
        dim, depth, seq = model.dim, model.n_layers, self.scale_bounds[-1][1]
        self.first_l = self.scales[0] ** 2

        self.word_embed = nn.Linear(codes.next_scale.z_channels, dim)
        self.class_emb = nn.Embedding(model.num_classes + 1, dim)  # last row: null class for CFG
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, dim))
        self.pos_1LC = nn.Parameter(torch.empty(1, seq, dim))
        self.lvl_embed = nn.Embedding(len(self.scales), dim)
        drop_path = 0.1 * depth / 24 if opt.drop_path is None else opt.drop_path
        self.blocks = nn.ModuleList(
            AdaLNSelfAttn(dim, dim, model.n_heads, 4.0, opt.attn_l2_norm, model.resid_dropout, model.ffn_dropout,
                          drop_path * i / max(depth - 1, 1))
            for i in range(depth)
        )
        self.head_nm = AdaLNBeforeHead(dim, dim)
        self.head = nn.Linear(dim, model.vocab_size)

        level = torch.cat([torch.full((s * s,), i) for i, s in enumerate(self.scales)])
        self.register_buffer("lvl_1L", level, persistent=False)  # (L,) scale id of each position
        self.register_buffer("mask", self.train_mask(), persistent=False)  # (L, L) bool
        self.reset_parameters()

    def reset_parameters(self, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5,
                         init_head: float = 0.02) -> None:
        """VAR's ``init_weights`` with its defaults: truncated normal std sqrt(1 / 3C), residual
        projections scaled by 1/sqrt(2 depth), AdaLN gates near zero (blocks start as identity)."""
        std = math.sqrt(1 / self.model_cfg.dim / 3)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for p in (self.pos_start, self.pos_1LC):
            nn.init.trunc_normal_(p, std=std)
        with torch.no_grad():
            self.head.weight.mul_(init_head)
            self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
            dim, depth = self.model_cfg.dim, len(self.blocks)
            for block in self.blocks:
                block.attn.proj.weight.div_(math.sqrt(2 * depth))
                block.ffn.fc2.weight.div_(math.sqrt(2 * depth))
                block.ada_lin[-1].weight[2 * dim :].mul_(init_adaln)
                block.ada_lin[-1].weight[: 2 * dim].mul_(init_adaln_gamma)  # gammas g1, g2

    @property
    def next_scale(self):
        """The tokenizer's next-scale inputs (``NextScaleInputs``) of the code space VAR was built on."""
        return self._next_scale[0]

    # --- schedule and mask ----------------------------------------------------------------------
    def schedule(self) -> list[Tensor]:
        """Step k produces scale k: its positions in the concatenated code sequence."""
        return [torch.arange(a, b) for a, b in self.scale_bounds]

    def train_mask(self) -> Tensor:
        """(L, L) block-causal: a position sees its own scale and every coarser one (the step of a
        position is its scale id)."""
        return visibility_mask(self.lvl_1L, cls_token_num=0)

    def guidance_scales(self, cfg_scale: float) -> list[float]:
        """Guidance scale used at each step: 1 + (cfg_scale - 1) * si / (K - 1) with ``cfg_ramp``
        (VAR's t = cfg * si / (K - 1) with t = cfg_scale - 1), else ``cfg_scale`` everywhere."""
        k = len(self.scales)
        if not self.options.cfg_ramp:
            return [cfg_scale] * k
        return [1 + (cfg_scale - 1) * si / (k - 1) for si in range(k)]

    def compile_decoding(self) -> bool:
        """Runs every block's cached step through the fused AdaLN step (``adaln.FusedAdaLNDecode``:
        two torch.compile regions around the shared decode attention), compiled once for all blocks,
        scales and batch sizes. Safe to call twice."""
        for block in self.blocks:
            block.fused_decode = fused_adaln_decode(compile=True)
        return True

    # --- model ------------------------------------------------------------------------------------
    def _logits(self, h: Tensor, cond: Tensor) -> Tensor:
        return self.head(self.head_nm(h, cond)).float()

    def step_logits(self, step: int, fed: tuple[Tensor, Tensor]) -> Tensor:
        """Logits (B', scale^2, V) of scale ``step`` from ``fed`` = (its blocks' output, class condition)."""
        return self._logits(*fed)

    def forward(self, tokens: Tensor, labels: Tensor) -> Tensor:
        """Teacher-forced logits (B, L, V) for multi-scale codes ``tokens`` (B, L); row n predicts code n."""
        b = tokens.shape[0]
        if self.training and self.model_cfg.class_dropout > 0:
            labels = drop_labels(labels, self.model_cfg.num_classes, self.model_cfg.class_dropout)
        cond = self.class_emb(labels)
        with torch.no_grad():
            inputs = self.next_scale.teacher_inputs(tokens)  # (B, L - first_l, Cvae)
        start = cond[:, None].expand(b, self.first_l, -1) + self.pos_start
        x = torch.cat([start, self.word_embed(inputs.to(self.word_embed.weight.dtype))], dim=1)
        x = x + self.lvl_embed(self.lvl_1L) + self.pos_1LC
        for block in self.blocks:
            x = block(x, cond, self.mask)
        return self._logits(x, cond)

    @torch.inference_mode()
    def generate(self, labels: Tensor, sampling: SamplingConfig, generator: torch.Generator | None = None) -> Tensor:
        """One cached forward per scale; returns codes (B, L) in the tokenizer's multi-scale layout
        (decode them with the tokenizer). CFG doubles the batch; its scale ramps per ``guidance_scales``."""
        with eval_mode(self):
            return self._generate(labels, sampling, generator)

    def _generate(self, labels: Tensor, sampling: SamplingConfig, generator: torch.Generator | None) -> Tensor:
        tok, b = self.next_scale, labels.shape[0]
        cond = self.class_emb(with_null_class(labels, self.model_cfg.num_classes) if sampling.uses_cfg else labels)
        setup_kv_caches(self, cond.shape[0], self.num_tokens, self.cache_dtype())
        lvl_pos = self.lvl_embed(self.lvl_1L) + self.pos_1LC  # (1, L, C)
        x = cond[:, None] + self.pos_start + lvl_pos[:, : self.first_l]
        f_hat = torch.zeros(b, tok.z_channels, *self.grid, device=labels.device)
        out = labels.new_empty(b, self.num_tokens)
        guidance, guided = self.guidance_scales(sampling.cfg_scale), self.guided_steps(sampling)
        for si, ((begin, end), scale) in enumerate(zip(self.scale_bounds, guidance, strict=True)):
            h = x
            for block in self.blocks:
                h = block(h, cond, cache_start=begin)
            idx = sample_step(self.step_logits(si, (h, cond)), sampling, guided[si], generator, scale)
            out[:, begin:end] = idx
            f_hat, nxt = tok.next_input(si, f_hat, idx)
            if nxt is not None:
                nxt_end = self.scale_bounds[si + 1][1]
                x = self.word_embed(nxt.to(self.word_embed.weight.dtype)) + lvl_pos[:, end:nxt_end]
                x = x.repeat(2, 1, 1) if sampling.uses_cfg else x
        return out
