"""VAR's transformer block: pre-LayerNorm attention + GELU MLP, modulated by the class (AdaLN).

Parameter names follow VAR's ``models/basic_var.py`` (``attn.mat_qkv``, ``attn.q_bias``,
``attn.v_bias``, ``attn.scale_mul_1H11``, ``attn.proj``, ``ffn.fc1``, ``ffn.fc2``, ``ada_lin.1``) so
official ``var_d*.pth`` weights load key for key. Attention runs through SDPA with a static KV cache
for decoding (``nar_bench.nn.transformer.KVCache``).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nar_bench.nn.fused_decode import decode_attention, mark_varying
from nar_bench.nn.transformer import KVCache

NORM_EPS = 1e-6  # VAR's LayerNorm eps


class DropPath(nn.Module):
    """Stochastic depth: drops a sample's whole residual branch with probability ``p``."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class SelfAttention(nn.Module):
    """Multi-head attention with q/v biases (no k bias). With ``l2_norm`` (VAR's default) q and k are
    unit vectors and a learned per-head scale, capped at 100, replaces 1/sqrt(d)."""

    def __init__(self, dim: int, n_heads: int, l2_norm: bool, proj_dropout: float):
        super().__init__()
        self.n_heads, self.head_dim, self.l2_norm = n_heads, dim // n_heads, l2_norm
        if l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, n_heads, 1, 1), 4.0).log())
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_dropout)
        self.kv_cache: KVCache | None = None

    def forward(self, x: Tensor, mask: Tensor | None = None, cache_start: int | None = None) -> Tensor:
        """x (B, n, C). With ``cache_start`` the new k/v are written at [start, start+n) and the
        queries attend to the whole filled prefix (VAR: a scale sees itself and every coarser one)."""
        b, n, c = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(b, n, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, n, d) each
        if self.l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(math.log(100)).exp()
            q, k = F.normalize(q, dim=-1) * scale_mul, F.normalize(k, dim=-1)
        if cache_start is not None:
            k, v = self.kv_cache.update(cache_start, k.to(self.kv_cache.k.dtype), v.to(self.kv_cache.v.dtype))
            q = q.to(k.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class AdaLNSelfAttn(nn.Module):
    """x + g1 * attn(LN(x) (1 + s1) + b1); x + g2 * ffn(LN(x) (1 + s2) + b2), with
    (g1, g2, s1, s2, b1, b2) = Linear(SiLU(cond)) in that order (VAR's layout of ``ada_lin``)."""

    def __init__(self, dim: int, cond_dim: int, n_heads: int, mlp_ratio: float = 4.0, l2_norm: bool = True,
                 dropout: float = 0.0, ffn_dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.dim = dim
        self.attn = SelfAttention(dim, n_heads, l2_norm, dropout)
        self.ffn = FFN(dim, round(dim * mlp_ratio), ffn_dropout)
        self.ln_wo_grad = nn.LayerNorm(dim, eps=NORM_EPS, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))
        self.drop_path = DropPath(drop_path)

    # Set by ``VAR.compile_decoding``: cached eval forwards then run the fused step instead
    fused_decode = None

    def forward(self, x: Tensor, cond: Tensor, mask: Tensor | None = None, cache_start: int | None = None) -> Tensor:
        """x (B, n, C), cond (B, D) -> (B, n, C)."""
        if self.fused_decode is not None and cache_start is not None and mask is None and not self.training:
            return self.fused_decode(self, x, cond, cache_start)
        g1, g2, s1, s2, b1, b2 = self.ada_lin(cond).view(-1, 1, 6, self.dim).unbind(2)
        x = x + self.drop_path(self.attn(self.ln_wo_grad(x) * (s1 + 1) + b1, mask, cache_start) * g1)
        return x + self.drop_path(self.ffn(self.ln_wo_grad(x) * (s2 + 1) + b2) * g2)


class AdaLNBeforeHead(nn.Module):
    """Final LayerNorm modulated by the class: LN(x) (1 + scale) + shift."""

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.dim = dim
        self.ln_wo_grad = nn.LayerNorm(dim, eps=NORM_EPS, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, self.dim).unbind(2)
        return self.ln_wo_grad(x) * (scale + 1) + shift


# --- fused decode step (the bench's compiled path) ------------------------------------------------
def adaln_attention_inputs(block: AdaLNSelfAttn, x: Tensor, mods: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, n, C), mods (B, 1, 6, C) = (g1, g2, s1, s2, b1, b2) -> q, k, v (B * n, H, d) for
    ``fused_decode.decode_attention``, whose softmax scale is 1/sqrt(d): q carries VAR's own scale
    times sqrt(d)."""
    attn, (b, n, c) = block.attn, x.shape
    _, _, s1, _, b1, _ = mods.unbind(2)
    h = F.layer_norm(x, (c,), eps=NORM_EPS) * (s1 + 1) + b1
    bias = torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias])
    q, k, v = F.linear(h, attn.mat_qkv.weight, bias).view(b * n, 3, attn.n_heads, attn.head_dim).unbind(1)
    scale = attn.scale * math.sqrt(attn.head_dim)
    if attn.l2_norm:
        scale_mul = attn.scale_mul_1H11.clamp_max(math.log(100)).exp().view(attn.n_heads, 1)
        q, k = F.normalize(q, dim=-1) * (scale_mul * scale), F.normalize(k, dim=-1)
    else:
        q = q * scale
    return q, k, v


def adaln_block_outputs(block: AdaLNSelfAttn, x: Tensor, attn_out: Tensor, mods: Tensor) -> Tensor:
    """Residual stream x (B, n, C) and the attention output (B * n, C) -> the block's output."""
    g1, g2, _, s2, _, b2 = mods.unbind(2)
    c = x.shape[-1]
    x = x + F.linear(attn_out.view_as(x), block.attn.proj.weight, block.attn.proj.bias) * g1
    h = F.layer_norm(x, (c,), eps=NORM_EPS) * (s2 + 1) + b2
    ffn = block.ffn
    return x + F.linear(F.gelu(F.linear(h, ffn.fc1.weight, ffn.fc1.bias), approximate="tanh"),
                        ffn.fc2.weight, ffn.fc2.bias) * g2


class FusedAdaLNDecode:
    """VAR's cached block step as two compiled regions (LayerNorm + modulation + QKV + L2 norm;
    projection + gate + LayerNorm + modulation + GELU MLP + gate) around the shared decode
    attention, which writes the scale's k/v into the static cache and attends over the filled
    prefix. Batch and tokens-per-scale are the dynamic dims (one graph for every scale and batch;
    a dim of size one gets its own). ``compile=False`` runs the same functions eagerly (tests)."""

    def __init__(self, compile: bool = True, attention: str = "auto"):
        self.compile, self.attention = compile, attention
        self.attention_inputs = torch.compile(adaln_attention_inputs) if compile else adaln_attention_inputs
        self.block_outputs = torch.compile(adaln_block_outputs) if compile else adaln_block_outputs

    def __call__(self, block: AdaLNSelfAttn, x: Tensor, cond: Tensor, cache_start: int) -> Tensor:
        mods = block.ada_lin(cond).view(-1, 1, 6, block.dim)
        if self.compile:  # batch and tokens per scale vary
            mark_varying((x, 0), (x, 1), (mods, 0))
        q, k, v = self.attention_inputs(block, x, mods)
        cache = block.attn.kv_cache
        out = decode_attention(q, k, v, cache.k, cache.v, cache_start, x.shape[1], self.attention).to(x.dtype)
        if self.compile:
            mark_varying((out, 0))
        return self.block_outputs(block, x, out, mods)


@functools.cache
def fused_adaln_decode(compile: bool = True, attention: str = "auto") -> FusedAdaLNDecode:
    """One shared instance per setting: its compiled regions serve every block and model."""
    return FusedAdaLNDecode(compile, attention)
