"""Convolutional encoder and decoder in LlamaGen's VQ layout (taming-transformers lineage).

Module names match LlamaGen's ``tokenizer/tokenizer_image/vq_model.py`` so official tokenizers
load key for key: ``conv_in``, ``conv_blocks.{i}.res.{j}`` (norm1, conv1, norm2, conv2,
nin_shortcut), ``conv_blocks.{i}.attn.{j}`` (norm, q, k, v, proj_out; lowest resolution only),
``conv_blocks.{i}.downsample.conv`` / ``upsample.conv``, ``mid.{0,1,2}`` (res, attn, res),
``norm_out``, ``conv_out``. The decoder's ``conv_blocks`` run from the lowest resolution up, so its
block 0 is the attention level, and every decoder level has one more res block than the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch.nn.functional as F
from torch import Tensor, nn

from nar_bench.nn.conv_blocks import ConvDecoder, Downsample2x, ResnetBlock, Upsample2x, group_norm, run_level


@dataclass
class ConvNetConfig:
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # one level per entry; downsample = 2 ** (levels - 1)
    num_res_blocks: int = 2
    z_channels: int = 256
    norm_groups: int = 32  # LlamaGen: 32; tiny widths need fewer
    dropout: float = 0.0

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


class AttnBlock(nn.Module):
    """Single-head spatial self-attention (separate 1x1 q/k/v convs, as in the checkpoint)."""

    def __init__(self, cfg: ConvNetConfig, channels: int):
        super().__init__()
        self.norm = group_norm(cfg, channels)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        q, k, v = (conv(hn).reshape(b, 1, c, h * w).transpose(-1, -2) for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, hw, C), scale C^-0.5 as the original
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


def _mid(cfg: ConvNetConfig, channels: int) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(cfg, channels, channels), AttnBlock(cfg, channels),
                          ResnetBlock(cfg, channels, channels)])


def _level(cfg: ConvNetConfig, block_in: int, block_out: int, n_res: int, attn: bool) -> nn.Module:
    level = nn.Module()
    level.res = nn.ModuleList(ResnetBlock(cfg, block_in if j == 0 else block_out, block_out) for j in range(n_res))
    level.attn = nn.ModuleList(AttnBlock(cfg, block_out) for _ in range(n_res if attn else 0))
    return level


class Encoder(nn.Module):
    """(B, 3, H, W) -> (B, z_channels, H / downsample, W / downsample)."""

    def __init__(self, cfg: ConvNetConfig):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(3, cfg.ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        block_in = cfg.ch
        for i, width in enumerate(widths):
            level = _level(cfg, block_in, width, cfg.num_res_blocks, attn=i == last)
            if i != last:
                level.downsample = Downsample2x(width)
            self.conv_blocks.append(level)
            block_in = width
        self.mid = _mid(cfg, block_in)
        self.norm_out = group_norm(cfg, block_in, silu=True)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = run_level(level.res, level.attn, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(self.norm_out(h))


class Decoder(ConvDecoder):
    """(B, z_channels, h, w) -> (B, 3, h * downsample, w * downsample), unclamped."""

    def __init__(self, cfg: ConvNetConfig):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        block_in = widths[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _mid(cfg, block_in)
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(len(widths))):  # lowest resolution first
            level = _level(cfg, block_in, widths[i], cfg.num_res_blocks + 1, attn=i == len(widths) - 1)
            if i != 0:
                level.upsample = Upsample2x(widths[i])
            self.conv_blocks.append(level)
            block_in = widths[i]
        self.norm_out = group_norm(cfg, block_in, silu=True)
        self.conv_out = nn.Conv2d(block_in, 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = run_level(level.res, level.attn, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(self.norm_out(h))

    def bias_handoffs(self) -> list[tuple[nn.Conv2d, ResnetBlock]]:
        levels = list(self.conv_blocks)
        return [(self.conv_in, self.mid[0])] + [(level.upsample.conv, after.res[0])
                                                  for level, after in pairwise(levels)]
