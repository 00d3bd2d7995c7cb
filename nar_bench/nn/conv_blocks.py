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

    def defer_conv1_bias(self) -> None:
        """norm2 adds conv1's bias as it reads conv1's output (see ``ConvDecoder.defer_biases``)."""
        bias = pop_bias(self.conv1)
        if bias is not None:
            self.norm2.take_input_bias(bias)

    def take_input_bias(self, bias: Tensor) -> None:
        """From now on the input arrives without ``bias`` (C_in,) added: norm1 adds it, and the shortcut
        too (a 1x1 conv's bias gains W @ bias; an identity shortcut's sum gains it through conv2's bias)."""
        self.norm1.take_input_bias(bias)
        target = self.nin_shortcut if isinstance(self.nin_shortcut, nn.Conv2d) else self.conv2
        with torch.no_grad(), torch.autocast(bias.device.type, enabled=False):
            if target is self.nin_shortcut:  # summed in fp32 and rounded once, as Upsample2x.fold_phases
                bias = self.nin_shortcut.weight.flatten(1).float() @ bias.float()
            target.bias.copy_(target.bias.float() + bias.float())


def pop_bias(conv: nn.Conv2d) -> Tensor | None:
    """Removes ``conv``'s bias (its output then lacks it) and returns it (None if it had none)."""
    bias = conv.bias
    conv.bias = None
    return None if bias is None else bias.detach()


class ConvDecoder(nn.Module):
    """A decoder of these blocks that knows which convolutions feed a res block and nothing else."""

    def bias_handoffs(self) -> list[tuple[nn.Conv2d, ResnetBlock]]:
        """(conv, res block) pairs, in run order: the block is the only reader of the conv's output."""
        raise NotImplementedError

    def defer_biases(self) -> None:
        """Inference only, the same function: each convolution whose output only a GroupNorm or a res
        block reads (conv1 -> norm2 in every res block; ``bias_handoffs``) leaves its bias to its reader,
        which adds it where it reads (the fused norm in its statistics and shift, the shortcut in its
        bias). Compiled, this saves a read and a write of each such output: Inductor adds a
        convolution's bias in a separate kernel, fused only into later pointwise work, and the norm
        op is opaque to it. Idempotent."""
        for conv, block in self.bias_handoffs():
            bias = pop_bias(conv)
            if bias is not None:
                block.take_input_bias(bias)
        for block in self.modules():
            if isinstance(block, ResnetBlock):
                block.defer_conv1_bias()


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
        # the sub-pixel form's weight (fold_phases): a buffer, so .to() moves and casts it, but not
        # a persistent one, so the state dict stays the checkpoint's
        self.register_buffer("phase_weight", None, persistent=False)

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

    def forward(self, x: Tensor) -> Tensor:
        if self.phase_weight is None:
            return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        b, _, h, w = x.shape
        # y[:, a, b', c, i + a, j + b'] is output pixel (2i + a, 2j + b'): with padding 1 the 2x2
        # window over input rows (i - 1 + a, i + a) lands on row i + a
        # the bias read here, not folded: ConvDecoder.defer_biases may take it away after the fold
        bias = None if self.conv.bias is None else self.conv.bias.repeat(4)
        y = F.conv2d(x, self.phase_weight, bias, padding=1).unflatten(1, (2, 2, -1))
        rows = [torch.stack([y[:, a, c, :, a : a + h, c : c + w] for c in (0, 1)], dim=-1) for a in (0, 1)]
        out = torch.stack(rows, dim=-3)  # (B, C, h, 2, w, 2)
        return out.reshape(b, -1, 2 * h, 2 * w).contiguous(memory_format=torch.channels_last)
