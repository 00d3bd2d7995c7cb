"""GroupNorm (+ SiLU) of the convolutional tokenizers, with a fast path for channels_last inference.

``GroupNorm`` is ``nn.GroupNorm`` (same parameters and state dict) that can also apply the SiLU
which every use but the attention block's follows it with. With ``fused = True`` (set by the fast
decoder, inference only: the kernels have no backward) a CUDA channels_last input runs two Triton
kernels instead:

1. moments: each program reads whole pixel rows (all C channels, contiguous in channels_last) of a
   run of pixels and sums, per element of its tile, the deviations from the run's first pixel and
   their squares; one reduction at the end gives each channel's mean and sum of squared
   deviations. Shifting by a sample of the same channel keeps E[d^2] - E[d]^2 free of the
   cancellation a far-from-zero channel mean would cause;
2. apply: y = x * scale + shift (then SiLU), with one scale and shift per (image, channel) from
   the group statistics, merged over programs and the group's channels the same way in fp32.

``input_bias`` (per channel, set by ``take_input_bias``): the norm's input is x + input_bias, with
x the tensor passed in; the fused path adds it to the statistics and to the affine shift instead of
to x, so the convolution before the norm need not write its output a second time to add its bias.

Why: a group's channels are 4 of the 128..512 in each pixel row, so GroupNorm's own reduction
(eager, or as torch.compile writes it) reads them 8 bytes at a time, strided by the row; in the
compiled VQ-16 decoder those reductions were about half of the decode time (measured profiles:
results/throughput_decoder/README.md).
Eager GroupNorm on channels_last also copies to NCHW and back. Statistics are fp32 as in
PyTorch's kernel; the output is rounded once to the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # Triton ships with CUDA builds of torch only
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm``, optionally followed by SiLU (``silu``); ``fused`` selects the Triton path
    for CUDA channels_last 4-D inputs (no autograd: inference only)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 silu: bool = False):
        super().__init__(num_groups, num_channels, eps=eps, affine=affine)
        self.silu = silu
        self.fused = False
        # a buffer, so .to() casts it with the weights; not persistent: the state dict stays the checkpoint's
        self.register_buffer("input_bias", None, persistent=False)

    def take_input_bias(self, bias: Tensor) -> None:
        """From now on the input arrives without ``bias`` (C,) added: the norm adds it (inference only)."""
        bias = bias.detach()
        self.input_bias = bias.clone() if self.input_bias is None else self.input_bias + bias

    def forward(self, x: Tensor) -> Tensor:
        if self.fused and self.affine and runs_fused(x):
            return torch.ops.nar_bench.group_norm_nhwc(x, self.weight, self.bias, self.num_groups, self.eps, self.silu,
                                                       self.input_bias)
        if self.input_bias is not None:
            x = x + self.input_bias.view(-1, *[1] * (x.dim() - 2))
        y = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.silu(y) if self.silu else y

    def extra_repr(self) -> str:
        return super().extra_repr() + (", silu=True" if self.silu else "")


def runs_fused(x: Tensor) -> bool:
    """Whether the Triton path takes ``x``: CUDA, 4-D, channels_last."""
    return triton is not None and x.is_cuda and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def merge_group_moments(mean: Tensor, m2: Tensor, counts: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    """Per-program, per-channel moments -> per-group mean and biased variance, in fp32.

    mean, m2 (B, P, C): each program's per-channel mean and sum of squared deviations over its
    ``counts[p]`` pixels (P,). Returns (mean, var), each (B, groups)."""
    b, p, c = mean.shape
    mean, m2 = mean.view(b, p, groups, c // groups), m2.view(b, p, groups, c // groups)
    n = counts.to(mean.dtype).view(1, p, 1, 1)
    total = n.sum() * (c // groups)
    group_mean = (mean * n).sum((1, 3)) / total
    spread = (n * (mean - group_mean[:, None, :, None]).square()).sum((1, 3))
    return group_mean, (m2.sum((1, 3)) + spread) / total


def affine_from_moments(mean: Tensor, m2: Tensor, counts: Tensor, groups: int, eps: float, weight: Tensor,
                        bias: Tensor, input_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-(image, channel) fp32 ``scale`` and ``shift`` (B, C) with GroupNorm(x + input_bias) = x * scale
    + shift, from x's per-program moments (``merge_group_moments``' arguments). A per-channel input bias
    moves each channel's mean and leaves the deviations within a channel as they are."""
    c = mean.shape[-1]
    if input_bias is not None:
        mean = mean + input_bias.float()
    group_mean, var = merge_group_moments(mean, m2, counts, groups)
    rstd = torch.rsqrt(var + eps).repeat_interleave(c // groups, 1)  # (B, C)
    scale = rstd * weight.float()
    offset = group_mean.repeat_interleave(c // groups, 1)
    if input_bias is not None:  # x is read without it
        offset = offset - input_bias.float()
    return scale, bias.float() - offset * scale


def tile_rows(channels: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_HW): all channels of a pixel row in one tile, ~4K elements per tile."""
    block_c = triton.next_power_of_2(channels)
    return block_c, max(1, 4096 // block_c)


def moments_plan(batch: int, pixels: int, channels: int) -> tuple[int, int, int, int]:
    """(BLOCK_HW, rows_per_program, programs per image, num_warps) for the moments kernel: ~4
    programs per SM, each image's pixels split into runs of whole tiles."""
    _, block_hw = tile_rows(channels)
    runs = max(1, min(triton.cdiv(pixels, block_hw), triton.cdiv(1024, batch)))
    rows_per_program = triton.cdiv(triton.cdiv(pixels, runs), block_hw) * block_hw
    return block_hw, rows_per_program, triton.cdiv(pixels, rows_per_program), 4


if triton is not None:

    @triton.jit
    def _group_norm_moments_kernel(X, Mean, M2, HW, C, rows_per_program, BLOCK_HW: tl.constexpr,
                                   BLOCK_C: tl.constexpr):
        b, p = tl.program_id(0), tl.program_id(1)
        num_programs = tl.num_programs(1)
        offs_c = tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        start = p * rows_per_program
        end = tl.minimum(start + rows_per_program, HW)
        base = X + b.to(tl.int64) * HW * C
        shift = tl.load(base + start * C + offs_c, mask=c_ok, other=0.0).to(tl.float32)
        # elementwise sums: one cross-thread reduction per program instead of one per tile
        sum_d = tl.zeros([BLOCK_HW, BLOCK_C], tl.float32)
        sum_d2 = tl.zeros([BLOCK_HW, BLOCK_C], tl.float32)
        for r in range(start, end, BLOCK_HW):
            rows = r + tl.arange(0, BLOCK_HW)
            ok = (rows < end)[:, None] & c_ok[None, :]
            x = tl.load(base + rows[:, None] * C + offs_c[None, :], mask=ok, other=0.0).to(tl.float32)
            d = tl.where(ok, x - shift[None, :], 0.0)
            sum_d += d
            sum_d2 += d * d
        n = (end - start).to(tl.float32)
        s1 = tl.sum(sum_d, 0)
        out = (b * num_programs + p) * C + offs_c
        tl.store(Mean + out, shift + s1 / n, mask=c_ok)
        tl.store(M2 + out, tl.maximum(tl.sum(sum_d2, 0) - s1 * s1 / n, 0.0), mask=c_ok)

    @triton.jit
    def _group_norm_apply_kernel(X, Scale, Shift, Out, HW, C, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
                      SILU: tl.constexpr):
        b, blk = tl.program_id(0), tl.program_id(1)
        offs_c = tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        rows = blk * BLOCK_HW + tl.arange(0, BLOCK_HW)
        mask = (rows < HW)[:, None] & c_ok[None, :]
        offs = b.to(tl.int64) * HW * C + rows[:, None] * C + offs_c[None, :]
        scale = tl.load(Scale + b * C + offs_c, mask=c_ok, other=0.0)
        shift = tl.load(Shift + b * C + offs_c, mask=c_ok, other=0.0)
        y = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32) * scale[None, :] + shift[None, :]
        if SILU:
            y = y * tl.sigmoid(y)
        tl.store(Out + offs, y.to(Out.dtype.element_ty), mask=mask)

    @torch.library.custom_op("nar_bench::group_norm_nhwc", mutates_args=())
    def group_norm_nhwc(x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float, silu: bool,
                        input_bias: Tensor | None = None) -> Tensor:
        # the kernels index pixel rows of C channels: whatever layout a compiled graph hands in
        x = x.contiguous(memory_format=torch.channels_last)
        b, c, h, w = x.shape
        hw = h * w
        block_c, block_hw = tile_rows(c)
        moments_hw, rows_per_program, runs, warps = moments_plan(b, hw, c)
        mean = x.new_empty(b, runs, c, dtype=torch.float32)
        m2 = torch.empty_like(mean)
        _group_norm_moments_kernel[(b, runs)](x, mean, m2, hw, c, rows_per_program, BLOCK_HW=moments_hw,
                                              BLOCK_C=block_c, num_warps=warps)
        counts = (hw - torch.arange(runs, device=x.device) * rows_per_program).clamp(max=rows_per_program)
        scale, shift = affine_from_moments(mean, m2, counts, groups, eps, weight, bias, input_bias)
        out = torch.empty_like(x, memory_format=torch.channels_last)
        _group_norm_apply_kernel[(b, triton.cdiv(hw, block_hw))](x, scale.contiguous(), shift.contiguous(), out, hw,
                                                                 c, BLOCK_HW=block_hw, BLOCK_C=block_c, SILU=silu)
        return out

    @group_norm_nhwc.register_fake
    def _(x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float, silu: bool,
          input_bias: Tensor | None = None) -> Tensor:
        return torch.empty_like(x, memory_format=torch.channels_last)
