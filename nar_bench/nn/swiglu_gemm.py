"""SwiGLU as one GEMM kernel for the fused decode step: ``silu(x @ w1.T) * (x @ w3.T)`` with both
products accumulated in fp32 in the same tile and the gate applied before anything is written.

The unfused form writes the (M, 2 * hidden) GEMM output and reads it back for the product (at
NAR-B's large batches that pass was 7% of a generation, reading and writing at the card's copy
bandwidth). Here the (M, hidden) product is the only output. The gate and the product are computed
from the fp32 accumulators (the unfused form rounds gate and up to bf16 first), so the result can
differ from it by a bf16 step.

CUDA with Triton only; ``swiglu`` falls back to the plain form elsewhere. An opaque custom op, so
torch.compile keeps it as one call inside the compiled region instead of tracing the Python that
picks the tile shape from the row count (which would specialise the graph on it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

try:  # Triton ships with CUDA builds of torch only
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None


def swiglu_reference(x: Tensor, w13: Tensor) -> Tensor:
    """x (M, dim), w13 (2 * hidden, dim) = cat([w1, w3]) -> silu(x w1^T) * (x w3^T), (M, hidden)."""
    gate, up = F.linear(x, w13).chunk(2, dim=-1)
    return F.silu(gate) * up


def swiglu(x: Tensor, w13: Tensor) -> Tensor:
    """``swiglu_reference`` through the fused kernel where it runs (CUDA, Triton, bf16/fp16)."""
    if triton is not None and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and x.dtype == w13.dtype:
        return torch.ops.nar_bench.swiglu_gemm(x, w13)
    return swiglu_reference(x, w13)


# Tile per row count (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages). Few rows: the weights' read bounds
# the kernel, so narrow column tiles give every SM a share of them.
def tile_config(m: int) -> tuple[int, int, int, int, int]:
    if m <= 64:
        return 16, 32, 128, 4, 4
    if m <= 512:
        return 64, 64, 64, 4, 4
    return 128, 128, 64, 8, 3


if triton is not None:

    @triton.jit
    def _swiglu_gemm_kernel(X, W, Out, M, N, K, sx_m, sw_n, so_m,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            GROUP_M: tl.constexpr):
        pid = tl.program_id(0)
        tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
        # grouped order: neighbouring programs share weight tiles in L2
        group = GROUP_M * tiles_n
        first_m = (pid // group) * GROUP_M
        group_m = min(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (pid % group) % group_m
        pid_n = (pid % group) // group_m

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        m_ok, n_ok = offs_m < M, offs_n < N
        x_ptrs = X + offs_m[:, None] * sx_m + offs_k[None, :]
        w1_ptrs = W + offs_n[None, :] * sw_n + offs_k[:, None]  # (BLOCK_K, BLOCK_N) of w1^T
        w3_ptrs = w1_ptrs + N * sw_n  # w3 = rows N .. 2N of the stacked weight
        gate = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k_ok = (k0 + offs_k) < K
            x = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            w1 = tl.load(w1_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            w3 = tl.load(w3_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            gate = tl.dot(x, w1, gate)
            up = tl.dot(x, w3, up)
            x_ptrs += BLOCK_K
            w1_ptrs += BLOCK_K
            w3_ptrs += BLOCK_K
        out = gate * tl.sigmoid(gate) * up
        tl.store(Out + offs_m[:, None] * so_m + offs_n[None, :], out.to(Out.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])

    @torch.library.custom_op("nar_bench::swiglu_gemm", mutates_args=())
    def swiglu_gemm(x: Tensor, w13: Tensor) -> Tensor:
        m, k = x.shape
        n = w13.shape[0] // 2
        if max(x.numel(), w13.numel(), m * n) >= 2**31:  # the kernel's offsets are 32-bit
            return swiglu_reference(x, w13)
        x = x if x.stride(-1) == 1 else x.contiguous()
        w13 = w13 if w13.stride(-1) == 1 else w13.contiguous()
        out = x.new_empty(m, n)
        block_m, block_n, block_k, warps, stages = tile_config(m)
        grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
        _swiglu_gemm_kernel[grid](x, w13, out, m, n, k, x.stride(0), w13.stride(0), out.stride(0),
                                  BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8,
                                  num_warps=warps, num_stages=stages)
        return out

    @swiglu_gemm.register_fake
    def _(x: Tensor, w13: Tensor) -> Tensor:
        return x.new_empty(x.shape[0], w13.shape[0] // 2)
