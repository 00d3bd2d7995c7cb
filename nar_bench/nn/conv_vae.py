"""Convolutional VQ-VAE encoder and decoder in the latent-diffusion layout that VAR's VQVAE uses.

Module names (``conv_in``, ``down.{i}.block.{j}.norm1`` ..., ``mid.attn_1``, ``up.{i}.upsample``,
``norm_out``, ``conv_out``) match VAR's ``models/basic_vae.py`` so ``vae_ch160v4096z32.pth`` loads
key for key. Channel widths, depth and attention are configurable so the same code runs a tiny
CPU tokenizer and the official ch=160 layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch.nn.functional as F
from torch import Tensor, nn

from nar_bench.nn.conv_blocks import ConvDecoder, Downsample2x, ResnetBlock, Upsample2x, group_norm, run_level


@dataclass
class ConvVAEConfig:
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # one level per entry; downsample = 2 ** (levels - 1)
    num_res_blocks: int = 2
    z_channels: int = 32
    using_sa: bool = True  # self-attention at the lowest resolution level
    using_mid_sa: bool = True  # self-attention in the middle block
    norm_groups: int = 32  # GroupNorm groups (VAR: 32); tiny widths need fewer
    dropout: float = 0.0

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a residual connection."""

    def __init__(self, cfg: ConvVAEConfig, channels: int):
        super().__init__()
        self.norm = group_norm(cfg, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # (B, hw, C)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


def _mid(cfg: ConvVAEConfig, channels: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(cfg, channels, channels)
    mid.attn_1 = AttnBlock(cfg, channels) if cfg.using_mid_sa else nn.Identity()
    mid.block_2 = ResnetBlock(cfg, channels, channels)
    return mid


class Encoder(nn.Module):
    """(B, 3, H, W) -> (B, z_channels, H / downsample, W / downsample)."""

    def __init__(self, cfg: ConvVAEConfig):
        super().__init__()
        levels = len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(3, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(cfg, block_in, cfg.ch * mult))
                block_in = cfg.ch * mult
                if i == levels - 1 and cfg.using_sa:
                    level.attn.append(AttnBlock(cfg, block_in))
            if i != levels - 1:
                level.downsample = Downsample2x(block_in)
            self.down.append(level)
        self.mid = _mid(cfg, block_in)
        self.norm_out = group_norm(cfg, block_in, silu=True)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = run_level(level.block, level.attn, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(self.norm_out(h))


class Decoder(ConvDecoder):
    """(B, z_channels, h, w) -> (B, 3, h * downsample, w * downsample), unclamped."""

    def __init__(self, cfg: ConvVAEConfig):
        super().__init__()
        levels = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _mid(cfg, block_in)
        up = []
        for i in reversed(range(levels)):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(cfg, block_in, cfg.ch * cfg.ch_mult[i]))
                block_in = cfg.ch * cfg.ch_mult[i]
                if i == levels - 1 and cfg.using_sa:
                    level.attn.append(AttnBlock(cfg, block_in))
            if i != 0:
                level.upsample = Upsample2x(block_in)
            up.insert(0, level)  # stored finest-first, run coarsest-first (VAR's order)
        self.up = nn.ModuleList(up)
        self.norm_out = group_norm(cfg, block_in, silu=True)
        self.conv_out = nn.Conv2d(block_in, 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(self.up):
            h = run_level(level.block, level.attn, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(self.norm_out(h))

    def bias_handoffs(self) -> list[tuple[nn.Conv2d, ResnetBlock]]:
        levels = list(reversed(self.up))  # run order
        return [(self.conv_in, self.mid.block_1)] + [(level.upsample.conv, after.block[0])
                                                      for level, after in pairwise(levels)]
