"""Convolution blocks shared by the taming-transformers lineage VAEs: VAR's VQVAE
(``nar_bench.nn.conv_vae``) and LlamaGen's VQ (``nar_bench.nn.llamagen_vae``) use the same blocks
under the same parameter names (``norm1``, ``conv1``, ``norm2``, ``conv2``, ``nin_shortcut``, ``conv``)."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nar_bench.nn.group_norm import GroupNorm


class ConvSettings(Protocol):
    """The fields of a VAE config the blocks read (ConvVAEConfig and ConvNetConfig have them)."""

    norm_groups: int
    dropout: float


def run_level(blocks: nn.ModuleList, attns: nn.ModuleList, h: Tensor) -> Tensor:
    """One resolution level: each res block, followed by its attention block if the level has them."""
    for j, block in enumerate(blocks):
        h = block(h)
        if len(attns):
            h = attns[j](h)
    return h


def group_norm(cfg: ConvSettings, channels: int, silu: bool = False) -> GroupNorm:
    """The blocks' GroupNorm; ``silu``: followed by SiLU (inside the norm, so the fast path fuses it)."""
    return GroupNorm(cfg.norm_groups, channels, eps=1e-6, affine=True, silu=silu)


class ResnetBlock(nn.Module):
    def __init__(self, cfg: ConvSettings, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = group_norm(cfg, in_channels, silu=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(cfg, out_channels, silu=True)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(self.norm1(x))
        h = self.conv2(self.dropout(self.norm2(h)))
        return self.nin_shortcut(x) + h


class Downsample2x(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad, as taming / VAR / LlamaGen


# Nearest 2x upsampling then a 3x3 conv: each output phase (row parity a, column parity b) sees a
# 2x2 window of the low-resolution input, whose taps are sums of the 3x3 kernel's: for parity 0 the
# window's rows are (i-1, i) with kernel rows (0, 1+2), for parity 1 rows (i, i+1) with (0+1, 2).
_PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],
                            [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # (parity, 2 taps, 3 kernel rows)


class Upsample2x(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        # the sub-pixel form's weights (fold_phases): buffers, so .to() moves and casts them, but
        # not persistent ones, so the state dict stays the checkpoint's
        self.register_buffer("phase_weight", None, persistent=False)
        self.register_buffer("phase_bias", None, persistent=False)

    def fold_phases(self) -> None:
        """Switches to the sub-pixel form of the same function (for inference): one 2x2 conv of
        the low-resolution input gives all four output phases (4 x channels outputs), which are
        interleaved into the 2x image. It does 4/9 of the multiply-adds and never writes the
        upsampled input. The folded weights are sums of ``conv``'s, computed in fp32; call it
        before casting to bf16, so they are rounded once."""
        w = self.conv.weight.detach()
        taps = _PHASE_TAPS.to(w.device)
        # fp32 whatever the caller's autocast (a Trainer's bf16-mixed would round the sums to bf16 first)
        with torch.autocast(w.device.type, enabled=False):
            phase_w = torch.einsum("ary,oiyx,bsx->aboirs", taps, w.float(), taps)  # (2, 2, out, in, 2, 2)
        self.phase_weight = phase_w.flatten(0, 2).to(w.dtype)  # (4 * out, in, 2, 2), phase-major
        self.phase_bias = self.conv.bias.detach().repeat(4)

    def forward(self, x: Tensor) -> Tensor:
        if self.phase_weight is None:
            return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        b, _, h, w = x.shape
        # y[:, a, b', c, i + a, j + b'] is output pixel (2i + a, 2j + b'): with padding 1 the 2x2
        # window over input rows (i - 1 + a, i + a) lands on row i + a
        y = F.conv2d(x, self.phase_weight, self.phase_bias, padding=1).unflatten(1, (2, 2, -1))
        rows = [torch.stack([y[:, a, c, :, a : a + h, c : c + w] for c in (0, 1)], dim=-1) for a in (0, 1)]
        out = torch.stack(rows, dim=-3)  # (B, C, h, 2, w, 2)
        return out.reshape(b, -1, 2 * h, 2 * w).contiguous(memory_format=torch.channels_last)
