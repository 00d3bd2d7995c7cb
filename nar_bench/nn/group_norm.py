"""GroupNorm (+ SiLU) of the convolutional tokenizers, with a fast path for channels_last inference.

``GroupNorm`` is ``nn.GroupNorm`` (same parameters and state dict) that can also apply the SiLU
which every use but the attention block's follows it with. With ``fused = True`` (set by the fast
decoder, inference only: the kernels have no backward) a CUDA channels_last input runs three Triton
kernels instead:

1. moments: each program reads whole pixel rows (all C channels, contiguous in channels_last) of a
   run of pixels and sums, per element of its tile, the deviations from the run's first pixel and
   their squares; one reduction at the end gives each channel's mean and sum of squared
   deviations. Shifting by a sample of the same channel keeps E[d^2] - E[d]^2 free of the
   cancellation a far-from-zero channel mean would cause;
2. affine: one program per (image, group) merges the programs' moments over the group's channels
   the same way in fp32 (Chan's parallel variance) into one scale and shift per (image, channel);
   one launch, where the same merge in torch ops took ~30 tiny kernels per norm;
3. apply: y = x * scale + shift (then SiLU).

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
    def _group_norm_affine_kernel(Mean, M2, Weight, Bias, InputBias, Scale, Shift, HW, C, CPG, runs, rows_per_program,
                                  eps, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, HAS_INPUT_BIAS: tl.constexpr):
        b, g = tl.program_id(0), tl.program_id(1)
        offs_p, offs_k = tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_K)
        p_ok, k_ok = offs_p < runs, offs_k < CPG
        ok = p_ok[:, None] & k_ok[None, :]
        channels = g * CPG + offs_k
        at = (b * runs + offs_p)[:, None] * C + channels[None, :]
        mean = tl.load(Mean + at, mask=ok, other=0.0)
        m2 = tl.load(M2 + at, mask=ok, other=0.0)
        n = tl.where(p_ok, tl.minimum(rows_per_program, HW - offs_p * rows_per_program), 0).to(tl.float32)
        if HAS_INPUT_BIAS:  # moves each channel's mean; the deviations within a channel stay x's
            input_bias = tl.load(InputBias + channels, mask=k_ok, other=0.0).to(tl.float32)
            mean = mean + input_bias[None, :]
        total = (HW * CPG).to(tl.float32)
        group_mean = tl.sum(tl.sum(mean * n[:, None], 1), 0) / total
        deviation = tl.where(ok, mean - group_mean, 0.0)
        var = (tl.sum(tl.sum(m2, 1), 0) + tl.sum(tl.sum(deviation * deviation * n[:, None], 1), 0)) / total
        scale = tl.load(Weight + channels, mask=k_ok, other=0.0).to(tl.float32) / tl.sqrt(var + eps)
        offset = group_mean - input_bias if HAS_INPUT_BIAS else group_mean  # x is read without the input bias
        shift = tl.load(Bias + channels, mask=k_ok, other=0.0).to(tl.float32) - offset * scale
        tl.store(Scale + b * C + channels, scale, mask=k_ok)
        tl.store(Shift + b * C + channels, shift, mask=k_ok)

    def group_affine(mean: Tensor, m2: Tensor, pixels: int, rows_per_program: int, weight: Tensor, bias: Tensor,
                     input_bias: Tensor | None, groups: int, eps: float) -> tuple[Tensor, Tensor]:
        """fp32 ``scale`` and ``shift`` (B, C) with GroupNorm(x + input_bias) = x * scale + shift, from x's
        per-program moments ``mean``, ``m2`` (B, P, C): each program's per-channel mean and sum of squared
        deviations over its run of ``rows_per_program`` of the image's ``pixels`` (the last run shorter)."""
        b, runs, c = mean.shape
        scale = torch.empty(b, c, device=mean.device, dtype=torch.float32)
        shift = torch.empty_like(scale)
        _group_norm_affine_kernel[(b, groups)](  # without an input bias, weight stands in (never loaded)
            mean, m2, weight, bias, weight if input_bias is None else input_bias, scale, shift, pixels, c,
            c // groups, runs, rows_per_program, eps, BLOCK_P=triton.next_power_of_2(runs),
            BLOCK_K=triton.next_power_of_2(c // groups), HAS_INPUT_BIAS=input_bias is not None)
        return scale, shift

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
        scale, shift = group_affine(mean, m2, hw, rows_per_program, weight, bias, input_bias, groups, eps)
        out = torch.empty_like(x, memory_format=torch.channels_last)
        _group_norm_apply_kernel[(b, triton.cdiv(hw, block_hw))](x, scale, shift, out, hw, c, BLOCK_HW=block_hw,
                                                                 BLOCK_C=block_c, SILU=silu)
        return out

    @group_norm_nhwc.register_fake
    def _(x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float, silu: bool,
          input_bias: Tensor | None = None) -> Tensor:
        return torch.empty_like(x, memory_format=torch.channels_last)
