"""Fused decode step of the LLaMA block (``TransformerBlock`` with a KV cache), for every
paradigm on the shared backbone (raster AR, PAR, NAR).

One cached step of a block is three launch groups instead of ~30 eager kernels:

1. ``attention_projections`` (torch.compile): RMSNorm -> wqkv.
2. ``decode_attention``: RoPE on q and the step's k (real arithmetic, x0 c - x1 s, x1 c + x0 s, in
   fp32, rounded to the cache dtype as ``rope_rows``), writes the step's k/v into the static cache
   at [start, start + n) and attends over the filled prefix only. On CUDA with Triton one kernel
   does all of it (one program per (row, head, query block), online softmax over the prefix read
   from the cache, then over the step's own k/v read from the inputs, so there is no
   read-after-write race); elsewhere ``rope_rows``, the cache update and SDPA.
3. ``block_outputs`` (torch.compile): wo -> residual -> RMSNorm -> SwiGLU (w1 and w3 as one
   stacked GEMM with the gate in its epilogue on CUDA, ``swiglu_gemm``) -> residual.

Shapes: the compiled regions see rows flattened to (M = B * n, dim), so neither the batch nor the
tokens-per-step count (1 for AR and for the condition step, 2..16 for NAR, 4 for PAR) is a
separate dimension: M is the one dim marked dynamic, so one graph per region serves every step,
batch size and paradigm (only M = 1, a batch of one without CFG, gets its own static graph),
and the regions are compiled once for all layers (``inline_inbuilt_nn_modules``: parameters are
graph inputs). The same functions run uncompiled, which is what the CPU tests compare against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nar_bench.nn.swiglu_gemm import swiglu

try:  # Triton ships with CUDA builds of torch only
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None


def mark_varying(*dims: tuple[Tensor, int]) -> None:
    """Marks each (tensor, dim) dynamic for torch.compile, so one graph serves every size of it;
    a dim of size one is left alone (Dynamo specialises size one, and marking it is an error).
    Marking only the dims that vary also avoids duck-shaping them with a static dim of equal size,
    which would specialise the graph to that size."""
    for t, d in dims:
        if t.shape[d] > 1:
            torch._dynamo.mark_dynamic(t, d)


def rms_norm(x: Tensor, norm: nn.Module) -> Tensor:
    """LlamaGen's order (normalise in fp32, cast back, scale), as ``RMSNorm.forward``."""
    return F.rms_norm(x.float(), (x.shape[-1],), eps=norm.eps).type_as(x) * norm.weight


def rope_rows(x: Tensor, freqs: Tensor) -> Tensor:
    """Interleaved-pair rotation of x (M, H, D) by freqs (M, D/2, 2) (cos, sin), in real fp32
    arithmetic; returns x's dtype. Equals ``transformer.apply_rope`` row by row."""
    xs = x.float().unflatten(-1, (-1, 2))
    f = freqs.float().unsqueeze(1)  # (M, 1, D/2, 2): one table row per token, shared by heads
    x0, x1, cos, sin = xs[..., 0], xs[..., 1], f[..., 0], f[..., 1]
    return torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(-2).type_as(x)


def attention_projections(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x (M, dim) -> q, k, v, each (M, H, D), before RoPE."""
    attn = block.attention
    qkv = F.linear(rms_norm(x, block.attention_norm), attn.wqkv.weight).unflatten(-1, (3, attn.n_heads, -1))
    return qkv.unbind(1)


def attention_inputs(block: nn.Module, x: Tensor, freqs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x (M, dim), freqs (M, D/2, 2) -> rotated q, rotated k, v, each (M, H, D)."""
    q, k, v = attention_projections(block, x)
    return rope_rows(q, freqs), rope_rows(k, freqs), v


def block_outputs(block: nn.Module, x: Tensor, attn_out: Tensor, w13: Tensor) -> Tensor:
    """Residual stream x (M, dim) and attention output (M, dim) -> the block's output (M, dim).
    w13 (2 * hidden, dim): the SwiGLU's w1 and w3 stacked, one GEMM instead of two (``swiglu``)."""
    # The sum in fp32 and rounded once, as bf16's own add: a mixed-dtype add that Inductor does
    # not fold into cuBLAS's beta=1 GEMM (which needs a copy of x first), so it joins the norm's kernel.
    h = (x.float() + F.linear(attn_out, block.attention.wo.weight)).type_as(x)
    return h + F.linear(swiglu(rms_norm(h, block.ffn_norm), w13), block.feed_forward.w2.weight)


def stacked_w13(block: nn.Module) -> Tensor:
    """``cat([w1, w3])`` of the block's SwiGLU, cached on the block until either weight changes
    (a new tensor, dtype or device, or an in-place update)."""
    w1, w3 = block.feed_forward.w1.weight, block.feed_forward.w3.weight
    key = (w1.data_ptr(), w3.data_ptr(), w1._version, w3._version, w1.dtype)
    cached = block.__dict__.get("_w13")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, torch.cat([w1, w3]))
        block.__dict__["_w13"] = cached
    return cached[1]


def per_row_freqs(freqs: Tensor, b: int, n: int) -> Tensor:
    """The rotary table (n, D/2, 2) or (B, n, D/2, 2) of a step's tokens as one row per (batch row,
    token): (B * n, D/2, 2), always a fresh tensor."""
    table = freqs.new_empty(b * n, *freqs.shape[-2:])
    table.view(b, n, *freqs.shape[-2:]).copy_(freqs)
    return table


def sdpa_decode_attention(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, start: int,
                          n: int, freqs: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """Reference path: q, k, v (B*n, H, D) -> (B*n, H*D); rotates q and k by ``freqs`` (n, D/2, 2) or
    (B, n, D/2, 2) when given (``rope_rows``), writes k/v into the caches (B, H, S, D) at
    [start, start + n) and attends over [0, start + n) with SDPA, under ``mask`` (n, start + n) bool
    (True = may attend) when given."""
    b, end = q.shape[0] // n, start + n
    q, k, v = (t.to(k_cache.dtype) for t in (q, k, v))
    if freqs is not None:
        rows = per_row_freqs(freqs, b, n)
        q, k = rope_rows(q, rows), rope_rows(k, rows)
    q, k, v = (t.view(b, n, *t.shape[1:]).transpose(1, 2) for t in (q, k, v))
    k_cache[:, :, start:end] = k
    v_cache[:, :, start:end] = v
    out = F.scaled_dot_product_attention(q, k_cache[:, :, :end], v_cache[:, :, :end], attn_mask=mask)
    return out.transpose(1, 2).reshape(b * n, -1)


if triton is not None:

    @triton.jit
    def _load_rows(ptr, rows, ok, s_m, head_off, freqs_base, tokens, sf_m, D: tl.constexpr, ROPE: tl.constexpr):
        """Rows (R, D) of q or k for one head; with ROPE rotated by the table rows ``tokens`` ((D/2, 2)
        cos/sin each, contiguous) in fp32 and returned in the input dtype, as ``rope_rows``. The
        rotation is x * cos + swap(x) * (-sin, +sin) per pair, with swap(x) read from memory (the
        same cache lines, columns d ^ 1): no register shuffles between pairs."""
        offs_d = tl.arange(0, D)
        base = ptr + rows[:, None] * s_m + head_off
        x = tl.load(base + offs_d[None, :], mask=ok[:, None], other=0.0)
        if ROPE:
            swapped = tl.load(base + (offs_d ^ 1)[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
            pair = freqs_base + tokens[:, None] * sf_m + (offs_d // 2 * 2)[None, :]
            cos = tl.load(pair, mask=ok[:, None], other=0.0).to(tl.float32)
            sin = tl.load(pair + 1, mask=ok[:, None], other=0.0).to(tl.float32)
            sign = tl.where(offs_d % 2 == 0, -1.0, 1.0)[None, :]
            x = (x.to(tl.float32) * cos + swapped * (sin * sign)).to(x.dtype)
        return x

    @triton.jit
    def _attend(q, keys, values, ok, m_i, l_i, acc, qk_scale, DOT: tl.constexpr):
        """One online-softmax update of (running max, normaliser, output) for queries q (M, D) over
        keys (D, N) and values (N, D), key columns ``ok`` only; scores in log2 units. ``DOT``: the
        dots' input precision for fp32 inputs (ignored for bf16 / fp16)."""
        s = tl.where(ok[None, :], tl.dot(q, keys, input_precision=DOT) * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        acc = acc * alpha[:, None] + tl.dot(p.to(values.dtype), values, input_precision=DOT)
        return m_new, l_i * alpha + tl.sum(p, 1), acc

    @triton.jit
    def _decode_attention_kernel(Q, KN, VN, KC, VC, Out, Freqs, start, n, H, scale,
                                 sq_m, sq_h, skn_m, skn_h, svn_m, svn_h,
                                 sc_b, sc_h, sc_s, so_m, so_h, sf_b, sf_m,
                                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
                                 ROPE: tl.constexpr, ONE_BLOCK: tl.constexpr, DOT: tl.constexpr):
        pid_bh, pid_m = tl.program_id(0), tl.program_id(1)
        b, h = pid_bh // H, pid_bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D)
        m_ok = offs_m < n
        rows = b * n + offs_m
        freqs_base = Freqs + b * sf_b
        cdt = KC.dtype.element_ty
        q = _load_rows(Q, rows, m_ok, sq_m, h * sq_h, freqs_base, offs_m, sf_m, D, ROPE).to(cdt)
        kn = _load_rows(KN, rows, m_ok, skn_m, h * skn_h, freqs_base, offs_m, sf_m, D, ROPE).to(cdt)
        vn = tl.load(VN + rows[:, None] * svn_m + h * svn_h + offs_d[None, :], mask=m_ok[:, None], other=0.0).to(cdt)
        # This query block's own new k/v go into the cache; the attention below reads new tokens
        # from registers or KN/VN, never from the rows being written.
        kc_base = KC + b * sc_b + h * sc_h
        vc_base = VC + b * sc_b + h * sc_h
        tl.store(kc_base + (start + offs_m)[:, None] * sc_s + offs_d[None, :], kn, mask=m_ok[:, None])
        tl.store(vc_base + (start + offs_m)[:, None] * sc_s + offs_d[None, :], vn, mask=m_ok[:, None])

        qk_scale = scale * 1.4426950408889634  # exp(x) = exp2(x * log2 e)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        for s0 in range(0, start, BLOCK_N):  # the filled prefix, from the cache
            offs_n = s0 + tl.arange(0, BLOCK_N)
            n_ok = offs_n < start
            k = tl.load(kc_base + offs_n[None, :] * sc_s + offs_d[:, None], mask=n_ok[None, :], other=0.0)
            v = tl.load(vc_base + offs_n[:, None] * sc_s + offs_d[None, :], mask=n_ok[:, None], other=0.0)
            m_i, l_i, acc = _attend(q, k, v, n_ok, m_i, l_i, acc, qk_scale, DOT)
        if ONE_BLOCK:  # every token of the step is in this query block: its k/v are in registers
            m_i, l_i, acc = _attend(q, tl.trans(kn), vn, m_ok, m_i, l_i, acc, qk_scale, DOT)
        else:
            for j0 in range(0, n, BLOCK_M):  # the step's own tokens, from the inputs
                offs_j = j0 + tl.arange(0, BLOCK_M)
                j_ok = offs_j < n
                rows_j = b * n + offs_j
                k = _load_rows(KN, rows_j, j_ok, skn_m, h * skn_h, freqs_base, offs_j, sf_m, D, ROPE).to(cdt)
                v = tl.load(VN + rows_j[:, None] * svn_m + h * svn_h + offs_d[None, :], mask=j_ok[:, None], other=0.0)
                m_i, l_i, acc = _attend(q, tl.trans(k), v.to(cdt), j_ok, m_i, l_i, acc, qk_scale, DOT)
        out = acc / l_i[:, None]
        tl.store(Out + rows[:, None] * so_m + h * so_h + offs_d[None, :], out.to(Out.dtype.element_ty),
                 mask=m_ok[:, None])


def attention_tile(block_m: int) -> tuple[int, int, int]:
    """(BLOCK_N, warps, stages) for a query block of ``block_m`` rows. One warp per program when the
    step has at most 16 tokens (AR, PAR, NAR): it reads the cache faster than (64, 4, 2) at those
    steps, and VAR's late scales (query blocks of 64) keep four warps, where one warp is slower
    (the 27-tile measurement: results/throughput_kernels/)."""
    return (32, 1, 2) if block_m <= 16 else (64, 4, 2)


def triton_decode_attention(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, start: int,
                            n: int, freqs: Tensor | None = None, tile: tuple[int, int, int] | None = None) -> Tensor:
    """``sdpa_decode_attention`` as one Triton kernel (CUDA only); same arguments and result.
    ``tile``: (BLOCK_N, warps, stages), by default ``attention_tile`` of the query block."""
    m, heads, d = q.shape
    if k_cache.stride(-1) != 1 or q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("decode attention needs unit stride on the head dimension")
    out = torch.empty(m, heads, d, dtype=k_cache.dtype, device=q.device)
    rope = freqs is not None
    if not rope:
        freqs, sf_b, sf_m = q, 0, 0  # unread
    else:
        freqs = freqs if freqs.stride(-1) == 1 and freqs.stride(-2) == 2 else freqs.contiguous()
        sf_b = freqs.stride(0) if freqs.dim() == 4 and freqs.shape[0] > 1 else 0
        sf_m = freqs.stride(-3)
    block_m = max(16, min(64, triton.next_power_of_2(n)))
    # fp32 caches: full fp32 dots, as PyTorch's own fp32 matmuls (TF32 only where PyTorch allows it);
    # Triton's default would round their inputs to TF32's 10 mantissa bits
    dot = "tf32" if k_cache.dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32 else "ieee"
    block_n, num_warps, num_stages = tile or attention_tile(block_m)
    grid = ((m // n) * heads, triton.cdiv(n, block_m))
    _decode_attention_kernel[grid](
        q, k, v, k_cache, v_cache, out, freqs, start, n, heads, 1.0 / math.sqrt(d),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), out.stride(0), out.stride(1), sf_b, sf_m,
        BLOCK_M=block_m, BLOCK_N=block_n, D=d, ROPE=rope, ONE_BLOCK=n <= block_m, DOT=dot, num_warps=num_warps,
        num_stages=num_stages)
    return out.view(m, heads * d)


def decode_attention(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, start: int, n: int,
                     backend: str = "auto", freqs: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """RoPE on q and k (with ``freqs``) + cache write + attention over the filled prefix; returns the
    cache dtype. ``backend``: "triton" (CUDA), "sdpa", or
    "auto": Triton when available on the tensors' device and the head dim is a power of two.

    Also for one token per step (raster AR): SDPA picks cuDNN there, which reads the cache a little
    faster at large batches but builds a plan for every new (rows, prefix length) shape, hundreds
    of them per batch size for AR's 256 steps, which dominated a sweep's setup.

    ``mask`` (n, start + n) bool, a step that may not see the whole prefix (ZipAR): always SDPA, as the
    Triton kernel reads the prefix unmasked."""
    if mask is not None:
        return sdpa_decode_attention(q, k, v, k_cache, v_cache, start, n, freqs, mask)
    if backend == "auto":
        d = q.shape[-1]
        fits = triton is not None and q.is_cuda and d >= 16 and d & (d - 1) == 0
        backend = "triton" if fits else "sdpa"
    if backend == "triton":
        return triton_decode_attention(q, k, v, k_cache, v_cache, start, n, freqs)
    return sdpa_decode_attention(q, k, v, k_cache, v_cache, start, n, freqs)


class FusedDecode:
    """The per-block decode step used once ``enable_fused_decode`` has marked a model's blocks.
    ``compile=False`` runs the same region functions eagerly (a reference for tests)."""

    def __init__(self, compile: bool = True, attention: str = "auto"):
        self.attention = attention
        self.compile = compile
        self._rows = None  # (freqs, batch, per-row table) of the whole-sequence step being run
        self.attention_projections = torch.compile(attention_projections) if compile else attention_projections
        self.attention_inputs = torch.compile(attention_inputs) if compile else attention_inputs
        self.block_outputs = torch.compile(block_outputs) if compile else block_outputs

    def __call__(self, block: nn.Module, x: Tensor, freqs: Tensor, cache_start: int,
                 mask: Tensor | None = None) -> Tensor:
        """x (B, n, dim), freqs (n, D/2, 2) or (B, n, D/2, 2) -> the block's output (B, n, dim);
        ``mask`` (n, cache_start + n) bool: what each fed row may attend to (None: the whole prefix)."""
        b, n, dim = x.shape
        rows = x.reshape(b * n, dim)
        if self.compile:  # only the row count varies
            mark_varying((rows, 0))
        q, k, v = self.attention_projections(block, rows)
        cache = block.attention.kv_cache
        out = decode_attention(q, k, v, cache.k, cache.v, cache_start, n, self.attention, freqs, mask).to(x.dtype)
        if self.compile:
            mark_varying((out, 0))
        return self.block_outputs(block, rows, out, stacked_w13(block)).view(b, n, dim)

    def whole_sequence(self, block: nn.Module, x: Tensor, freqs: Tensor) -> Tensor:
        """Uncached, unmasked forward of a whole sequence (MaskGIT's bidirectional decoding step)
        through the same two compiled regions, SDPA between them: x (B, S, dim), freqs (S, D/2, 2)."""
        b, s, dim = x.shape
        rows = x.reshape(b * s, dim)
        freqs_rows = self.rope_rows_table(freqs, b, s)
        if self.compile:
            mark_varying((rows, 0), (freqs_rows, 0))
        q, k, v = (t.view(b, s, *t.shape[1:]).transpose(1, 2) for t in self.attention_inputs(block, rows, freqs_rows))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b * s, dim)
        if self.compile:
            mark_varying((out, 0))
        return self.block_outputs(block, rows, out, stacked_w13(block)).view(b, s, dim)

    def rope_rows_table(self, freqs: Tensor, b: int, n: int) -> Tensor:
        """freqs expanded to one row per (batch row, token): (B * n, D/2, 2). Built once per step:
        every block of a step gets the same ``freqs`` object (the memo holds it, so identity is
        safe). A fresh tensor, so the compiled region always sees the same kind of tensor (a slice
        of the rope buffer and an indexed copy differ in dispatch keys, which would recompile)."""
        memo = self._rows
        if memo is not None and memo[0] is freqs and memo[1] == b:
            return memo[2]
        table = per_row_freqs(freqs, b, n)
        self._rows = (freqs, b, table)
        return table


_SHARED: dict[tuple[bool, str], FusedDecode] = {}


def enable_fused_decode(module: nn.Module, compile: bool = True, attention: str = "auto") -> int:
    """Routes the cached forward of every ``TransformerBlock`` inside ``module`` through one shared
    ``FusedDecode`` (one compiled graph per region for all blocks and models). Training and
    uncached forwards are unchanged. Returns the number of blocks switched."""
    from nar_bench.nn.transformer import TransformerBlock

    key = (compile, attention)
    if key not in _SHARED:
        _SHARED[key] = FusedDecode(compile, attention)
    blocks = [m for m in module.modules() if isinstance(m, TransformerBlock)]
    for block in blocks:
        block.fused_decode = _SHARED[key]
    return len(blocks)


def disable_fused_decode(module: nn.Module) -> None:
    from nar_bench.nn.transformer import TransformerBlock

    for m in module.modules():
        if isinstance(m, TransformerBlock):
            m.fused_decode = None
