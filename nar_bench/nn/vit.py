"""Pre-norm ViT blocks (timm's ``Block`` as MAR and LPD use it): LayerNorm, multi-head attention with
a biased fused QKV projection, GELU MLP of width 4 * dim; absolute positions live outside the blocks.
Parameter names follow timm (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``,
``mlp.fc2``), so official files load key for key. Attention takes a boolean mask (True = may attend)
and, for decoding, a static KV cache (``nar_bench.nn.transformer.setup_kv_caches``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from nar_bench.nn.transformer import KVCache

LAYER_NORM_EPS = 1e-6  # partial(nn.LayerNorm, eps=1e-6) of MAR's / LPD's model builders


class ViTAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, proj_dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.proj_dropout = nn.Dropout(proj_dropout)
        self.kv_cache: KVCache | None = None

    def forward(self, x: Tensor, mask: Tensor | None, cache_start: int | None = None) -> Tensor:
        """x (B, n, dim); mask (n, keys) bool; with ``cache_start`` the rows are written to the cache
        at [cache_start, cache_start + n) and attend to its prefix up to their end."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if cache_start is not None:
            k, v = self.kv_cache.update(cache_start, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj_dropout(self.proj(out.transpose(1, 2).reshape(b, n, -1)))


class ViTMlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)  # timm's Mlp drops after the activation and after fc2

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, mlp_ratio: float = 4.0, proj_dropout: float = 0.0,
                 mlp_dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = ViTAttention(dim, n_heads, proj_dropout)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = ViTMlp(dim, int(dim * mlp_ratio), mlp_dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, cache_start: int | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), mask, cache_start)
        return x + self.mlp(self.norm2(x))
