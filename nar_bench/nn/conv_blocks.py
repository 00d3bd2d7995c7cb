"""Convolution blocks shared by the taming-transformers lineage VAEs: VAR's VQVAE
(``nar_bench.nn.conv_vae``) and LlamaGen's VQ (``nar_bench.nn.llamagen_vae``) use the same blocks
under the same parameter names (``norm1``, ``conv1``, ``norm2``, ``conv2``, ``nin_shortcut``, ``conv``)."""

from __future__ import annotations

from typing import Protocol

import torch.nn.functional as F
from torch import Tensor, nn


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


def group_norm(cfg: ConvSettings, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(cfg.norm_groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cfg: ConvSettings, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = group_norm(cfg, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(cfg, out_channels)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class Downsample2x(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad, as taming / VAR / LlamaGen


class Upsample2x(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
