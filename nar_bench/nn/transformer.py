"""LLaMA-style decoder shared by raster AR, PAR and NAR.

Module and parameter names follow LlamaGen's GPT (``tok_embeddings``, ``cls_embedding``,
``layers.{i}.attention.wqkv`` ...) so official checkpoints map onto it key for key.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# name -> (dim, n_layers, n_heads). B/L/XL/XXL are LlamaGen's GPT sizes, M is NAR's
# (L minus 6 layers), LP NAR's video size (llama-abs-LP, NAR-LP); tiny/small are CPU sizes for tests
# and the embedded demo. d{depth} are VAR's
# sizes (width 64 * depth, heads = depth); d2 is a CPU-sized one on the same rule.
MODEL_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 2, 4),
    "small": (192, 4, 6),
    "B": (768, 12, 12),
    "M": (1024, 18, 16),
    "L": (1024, 24, 16),
    "LP": (1280, 30, 20),
    "XL": (1280, 36, 20),
    "XXL": (1536, 48, 24),
    "d2": (128, 2, 2),
    "d16": (1024, 16, 16),
    "d20": (1280, 20, 20),
    "d24": (1536, 24, 24),
    "d30": (1920, 30, 30),
}


def size_name(dim: int, n_layers: int, n_heads: int | None = None) -> str | None:
    """The MODEL_SIZES key with these dims (``n_heads`` ignored when None, e.g. for a state dict,
    which does not show it), else None."""
    return next((name for name, (d, n, h) in MODEL_SIZES.items()
                 if (d, n) == (dim, n_layers) and n_heads in (None, h)), None)


@dataclass
class TransformerConfig:
    dim: int = 768
    n_layers: int = 12
    n_heads: int = 12
    vocab_size: int = 16384
    num_classes: int = 1000
    cls_token_num: int = 1
    ffn_multiple_of: int = 256
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    token_dropout: float = 0.1
    resid_dropout: float = 0.1
    ffn_dropout: float = 0.1
    class_dropout: float = 0.1
    # rope: rotary rows per grid axis (LlamaGen), passed to the blocks; learned | sincos: one absolute
    # row per sequence position added to the inputs (NAR's video model), no rotary embedding.
    position_embedding: str = "rope"
    max_seq_len: int = 0  # rows of the absolute table (condition tokens + sequence); learned / sincos only

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_hidden(self) -> int:
        """LlamaGen's SwiGLU width: 2/3 of 4*dim, rounded up to a multiple of ``ffn_multiple_of``."""
        hidden = int(2 * (4 * self.dim) / 3)
        m = self.ffn_multiple_of
        return hidden if hidden % m == 0 else hidden + m - hidden % m


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # normalised in fp32, cast back, then scaled: LlamaGen's order (checkpoint-exact logits)
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


POSITION_EMBEDDINGS = ("rope", "learned", "sincos")


def sincos_table(positions: int, dim: int, base: float = 10000.0) -> Tensor:
    """(positions, dim) fixed 1D sin-cos embedding (MAE / NAR video ``use_fixed_pe``): the first half
    of the channels is sin(p * w_i), the second half cos(p * w_i), w_i = base^(-i / (dim / 2))."""
    if dim % 2:
        raise ValueError(f"sin-cos position embedding needs an even dim, got {dim}")
    freqs = base ** -(torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = torch.arange(positions, dtype=torch.float64)[:, None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def rope_table(positions: Tensor, head_dim: int, base: float = 10000.0) -> Tensor:
    """Multi-axis rotary table, LlamaGen's 2D layout generalised to any number of axes.

    positions: (N, A) integer grid coordinates (row, col) or (t, row, col).
    Returns (N, head_dim // 2, 2) with cos/sin per rotary pair; pairs are split evenly across
    axes, axis 0 first. For A=2 this equals LlamaGen's ``precompute_freqs_cis_2d``.
    """
    n_axes = positions.shape[1]
    if head_dim % (2 * n_axes):
        raise ValueError(f"head_dim {head_dim} must be divisible by 2 * {n_axes} axes for rotary embedding")
    axis_dim = head_dim // n_axes
    freqs = 1.0 / (base ** (torch.arange(0, axis_dim, 2).float() / axis_dim))  # (axis_dim // 2,)
    angles = torch.cat([positions[:, a, None].float() * freqs for a in range(n_axes)], dim=-1)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


def condition_rope(table: Tensor, cls_token_num: int) -> Tensor:
    """Prepends zero rotary rows for the condition tokens (LlamaGen: they carry no position)."""
    return torch.cat([table.new_zeros(cls_token_num, *table.shape[1:]), table])


def apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """x: (B, L, H, D); freqs: (L, D/2, 2) or (B, L, D/2, 2). Interleaved pairs as LlamaGen.

    Eager: rotating pair (x0, x1) by (cos, sin) is the complex product (x0 + i x1)(cos + i sin),
    one kernel instead of LlamaGen's four products and a stack (decoding is elementwise-bound).
    Under torch.compile the real form is used, since Inductor fuses it but not complex ops.
    """
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    f = freqs.float().view(-1 if freqs.dim() == 4 else 1, xs.shape[1], 1, xs.shape[3], 2)
    if torch.compiler.is_compiling():
        out = torch.stack([xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1],
                           xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]], dim=-1)
    else:
        out = torch.view_as_real(torch.view_as_complex(xs) * torch.view_as_complex(f.contiguous()))
    return out.flatten(3).type_as(x)


class KVCache:
    """Static cache, allocated once per generation: (B, heads, max_seq, head_dim).

    A plain object, not a submodule: decode state must not become module buffers, which DDP
    re-collects and broadcasts from rank 0 on every training forward (rank 0's validation sample
    grid would leave inference-mode caches that the other ranks do not have)."""

    def __init__(self, batch: int, max_seq: int, n_heads: int, head_dim: int, dtype, device):
        shape = (batch, n_heads, max_seq, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def update(self, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Writes k/v (B, H, n, D) at [start, start+n) and returns the filled prefix."""
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    # Set by ``nar_bench.nn.flex_masks.enable_flex_training``: masked (training) forwards then run
    # FlexAttention on the mask's cached BlockMask instead of SDPA on the dense mask.
    flex_masks = None

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.resid_dropout = nn.Dropout(cfg.resid_dropout)
        self.kv_cache: KVCache | None = None

    def forward(self, x: Tensor, freqs: Tensor | None, mask: Tensor | None, cache_start: int | None) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.wqkv(x).view(b, n, 3, self.n_heads, self.head_dim).unbind(2)
        if freqs is not None:  # None: absolute position embeddings were added to the inputs
            q, k = apply_rope(q, freqs), apply_rope(k, freqs)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        causal = False
        if cache_start is not None:
            # Every paradigm feeds its cache in decode order, so a step sees exactly the filled
            # prefix: no mask is needed and SDPA can take its fastest kernel. The first chunk is the
            # condition tokens, causal among themselves as in training (they differ under absolute
            # position embeddings).
            k, v = self.kv_cache.update(cache_start, k, v)
            causal = cache_start == 0 and n > 1
        if mask is not None and self.flex_masks is not None:
            from nar_bench.nn.flex_masks import flex_masked_attention

            out = flex_masked_attention(q, k, v, self.flex_masks(mask))
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(b, n, -1)))


class FeedForward(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)
        self.ffn_dropout = nn.Dropout(cfg.ffn_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class TransformerBlock(nn.Module):
    # Set by ``nar_bench.nn.fused_decode.enable_fused_decode``: cached (decoding) forwards then run
    # the fused step; training and uncached forwards never do.
    fused_decode = None

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: Tensor, freqs: Tensor | None, mask: Tensor | None = None,
                cache_start: int | None = None) -> Tensor:
        # the fused step rotates with RoPE and treats the fed rows as one step (under ``mask``, if a
        # cached step has one: ZipAR); absolute-position models, uncached masked forwards and the
        # causal multi-token prefill (cache_start 0) take the eager path
        fusable = freqs is not None and cache_start is not None and (cache_start > 0 or x.shape[1] == 1)
        if self.fused_decode is not None and not self.training and freqs is not None:
            if fusable:
                return self.fused_decode(self, x, freqs, cache_start, mask)
            if cache_start is None and mask is None:  # bidirectional whole sequence (MaskGIT decoding)
                return self.fused_decode.whole_sequence(self, x, freqs)
        h = x + self.attention(self.attention_norm(x), freqs, mask, cache_start)
        return h + self.feed_forward(self.ffn_norm(h))


def drop_labels(labels: Tensor, null_class: int, p: float) -> Tensor:
    """Class-label dropout for CFG training: each label becomes ``null_class`` with probability p."""
    drop = torch.rand(labels.shape, device=labels.device) < p
    return torch.where(drop, torch.full_like(labels, null_class), labels)


class LabelEmbedder(nn.Module):
    """Class embedding with one extra row (index num_classes) as the null class for CFG."""

    def __init__(self, num_classes: int, dim: int, dropout: float):
        super().__init__()
        self.num_classes, self.dropout = num_classes, dropout
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: Tensor) -> Tensor:
        if self.training and self.dropout > 0:
            labels = drop_labels(labels, self.num_classes, self.dropout)
        return self.embedding_table(labels)


class Transformer(nn.Module):
    """Class-conditional LLaMA decoder. Sequence = [condition token(s), image tokens...].

    Positions: rotary rows passed to ``run_blocks`` (``position_embedding="rope"``), or an absolute
    table ``pos_embedding`` (1, max_seq_len, dim), learned or fixed sin-cos, added to the inputs
    after the token dropout (``embed``, ``add_positions``); the blocks then get ``freqs=None``.
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        if cfg.position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding '{cfg.position_embedding}' is not one of {POSITION_EMBEDDINGS}")
        if cfg.position_embedding != "rope" and cfg.max_seq_len < 1:
            raise ValueError("absolute position embeddings need max_seq_len (condition tokens + sequence) >= 1")
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.cls_embedding = LabelEmbedder(cfg.num_classes, cfg.dim, cfg.class_dropout)
        self.tok_dropout = nn.Dropout(cfg.token_dropout)
        if cfg.position_embedding == "learned":
            self.pos_embedding = nn.Parameter(torch.empty(1, cfg.max_seq_len, cfg.dim))
        else:  # sincos: persistent, as official files carry the fixed table too; rope: None
            table = sincos_table(cfg.max_seq_len, cfg.dim)[None] if cfg.position_embedding == "sincos" else None
            self.register_buffer("pos_embedding", table)
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
        if isinstance(self.pos_embedding, nn.Parameter):
            nn.init.normal_(self.pos_embedding, std=std)
        nn.init.zeros_(self.output.weight)  # LlamaGen zero-initialises the output layer

    def embed(self, tokens: Tensor, labels: Tensor) -> Tensor:
        """tokens (B, N) in sequence order, labels (B,) -> (B, cls + N, dim)."""
        cond = self.cls_embedding(labels)[:, None].expand(-1, self.cfg.cls_token_num, -1)
        h = self.tok_dropout(torch.cat([cond, self.tok_embeddings(tokens)], dim=1))
        return self.add_positions(h, slice(0, h.shape[1]))

    def add_positions(self, x: Tensor, positions: Tensor | slice) -> Tensor:
        """x (B, n, dim) plus the absolute rows of sequence ``positions`` (n,); x itself under RoPE."""
        return x if self.pos_embedding is None else x + self.pos_embedding[0, positions]

    def run_blocks(self, h: Tensor, freqs: Tensor | None, mask: Tensor | None = None,
                   cache_start: int | None = None) -> Tensor:
        for layer in self.layers:
            h = layer(h, freqs, mask, cache_start)
        return h

    def head(self, h: Tensor) -> Tensor:
        """Logits in the compute dtype; the loss and CFG upcast where precision matters."""
        return self.output(self.norm(h))

def setup_kv_caches(module: nn.Module, batch: int, max_seq: int, dtype: torch.dtype | None = None) -> None:
    """Gives every attention layer inside ``module`` (any submodule with a ``kv_cache`` slot: LLaMA's
    and VAR's AdaLN attention) a static cache; reused when it already fits."""
    for attn in [m for m in module.modules() if hasattr(m, "kv_cache")]:
        w = next(attn.parameters())
        want_dtype = dtype or w.dtype
        c = attn.kv_cache
        fits = c is not None and c.k.shape[0] == batch and c.k.shape[2] >= max_seq
        if not fits or c.k.dtype != want_dtype or c.k.device != w.device:
            attn.kv_cache = KVCache(batch, max_seq, attn.n_heads, attn.head_dim, want_dtype, w.device)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
