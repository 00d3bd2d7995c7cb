"""Nearest-neighbour 2x upsampling of channels_last images as one Triton copy kernel (inference).

Each program loads a run of input pixel rows (all C channels, contiguous in channels_last) once
and stores each row four times, at output pixels (2i, 2j), (2i, 2j + 1), (2i + 1, 2j) and
(2i + 1, 2j + 1): every load and store is a whole contiguous pixel row. It is a copy, so its output
is ``F.interpolate(x, scale_factor=2, mode="nearest")`` bit for bit.

Why: torch.compile writes the upsampling in the compiled VQ-16 decoder as gathers fused with the
residual add before it, at ~1/7 of the memory bandwidth; those kernels were ~48 ms of ~200 ms per
256 decoded images (H100 profile: results/evaluate_speed/diag/README.md). As an opaque op it also
keeps Inductor from fusing the add into it: the add is written once at the low resolution instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nar_bench.nn.group_norm import tile_rows, triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _nearest_upsample2x_kernel(X, Out, W, HW, C, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
        b, blk = tl.program_id(0), tl.program_id(1)
        offs_c = tl.arange(0, BLOCK_C)
        pixels = blk * BLOCK_HW + tl.arange(0, BLOCK_HW)  # input pixel i * W + j
        mask = (pixels < HW)[:, None] & (offs_c < C)[None, :]
        x = tl.load(X + b.to(tl.int64) * HW * C + pixels[:, None] * C + offs_c[None, :], mask=mask)
        i, j = pixels // W, pixels % W
        top_left = ((2 * i) * (2 * W) + 2 * j).to(tl.int64) * C  # output pixel (2i, 2j)
        row = 2 * W * C  # one output row further down
        out = Out + b.to(tl.int64) * 4 * HW * C + top_left[:, None] + offs_c[None, :]
        tl.store(out, x, mask=mask)
        tl.store(out + C, x, mask=mask)
        tl.store(out + row, x, mask=mask)
        tl.store(out + row + C, x, mask=mask)

    @torch.library.custom_op("nar_bench::nearest_upsample2x_nhwc", mutates_args=())
    def nearest_upsample2x_nhwc(x: Tensor) -> Tensor:
        # the kernel indexes pixel rows of C channels: whatever layout a compiled graph hands in
        x = x.contiguous(memory_format=torch.channels_last)
        b, c, h, w = x.shape
        block_c, block_hw = tile_rows(c)
        out = torch.empty(b, c, 2 * h, 2 * w, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
        _nearest_upsample2x_kernel[(b, triton.cdiv(h * w, block_hw))](x, out, w, h * w, c, BLOCK_HW=block_hw,
                                                                      BLOCK_C=block_c)
        return out

    @nearest_upsample2x_nhwc.register_fake
    def _(x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        return torch.empty(b, c, 2 * h, 2 * w, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
