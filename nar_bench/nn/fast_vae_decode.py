"""Fast decode of codes to images for the convolutional tokenizers (LlamaGen's VQ-16, VAR's msvq).

``FastDecoder(tokenizer, dtype)`` runs ``tokenizer.decode`` with weights in bf16, 4-D weights and
activations channels_last (cuDNN's tensor-core layout), compiled by torch.compile with static
shapes except the batch: Inductor fuses each GroupNorm + SiLU (and the residual adds) into Triton
kernels around the cuDNN convolutions (autotuned: ``cudnn.benchmark`` inside the call), which is
where eager spends its time. Batches are decoded in chunks of at most ``chunk`` images, so memory
stays bounded whatever the batch (no OOM at large batches); the chunk's batch dim is the graph's
one dynamic dim, so one graph serves every batch size (a chunk of one image is padded to two,
since size 1 would specialise).

Its GroupNorms reduce per channel first (``ChannelStatsGroupNorm``): GroupNorm's own decomposition
views the activation as (B, G, -1), which in channels_last is a full layout copy, and each group's
elements are then read 4 channels (8 bytes) at a time, strided by C: at 256 px those reductions
ran at ~0.2 TB/s and took more than half of the compiled decode (H100 profile, batch 256).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ChannelStatsGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters, same maths: two-pass fp32 mean and biased variance per
    group) whose statistics are reduced over H, W per channel, then over the channels of each
    group: the large reductions keep the channels_last layout (contiguous channels, coalesced)
    and only the (B, C) statistics are regrouped."""

    @classmethod
    def like(cls, norm: nn.GroupNorm) -> ChannelStatsGroupNorm:
        new = cls(norm.num_groups, norm.num_channels, norm.eps, affine=False)
        new.weight, new.bias = norm.weight, norm.bias  # shared: the state dict is unchanged
        return new

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        per_group = c // self.num_groups
        spatial = tuple(range(2, x.dim()))
        xf = x.float()

        def group_mean(per_channel: Tensor) -> Tensor:  # (B, C) -> (B, C, 1, ...): its group's mean
            means = per_channel.view(b, self.num_groups, per_group).mean(-1).repeat_interleave(per_group, 1)
            return means.view(b, c, *(1,) * len(spatial))

        centred = xf - group_mean(xf.mean(spatial))
        rstd = torch.rsqrt(group_mean(centred.square().mean(spatial)) + self.eps)
        y = centred * rstd
        if self.weight is not None:
            shape = (c, *(1,) * len(spatial))
            y = y * self.weight.float().view(shape) + self.bias.float().view(shape)
        return y.to(x.dtype)


def channel_stats_group_norms(module: nn.Module) -> int:
    """Replaces every ``nn.GroupNorm`` inside ``module`` by a ``ChannelStatsGroupNorm`` sharing its
    parameters; returns how many."""
    swapped = 0
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.GroupNorm:
                setattr(parent, name, ChannelStatsGroupNorm.like(child))
                swapped += 1
    return swapped


class FastDecoder:
    """codes (B, ...) -> images (B, 3, H, W) in the tokenizer's range, in ``dtype``. Codes are
    passed to ``tokenizer.decode`` flattened to (B, L), which it reads in its configured layout."""

    def __init__(self, tokenizer: nn.Module, dtype: torch.dtype = torch.bfloat16, chunk: int = 64,
                 compile: bool = True):
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1; got {chunk}")
        tokenizer.to(dtype=dtype, memory_format=torch.channels_last).eval()
        channel_stats_group_norms(tokenizer)
        self.tokenizer, self.chunk, self.compiled = tokenizer, chunk, compile
        self.decode_chunk = torch.compile(tokenizer.decode, dynamic=False) if compile else tokenizer.decode

    @torch.inference_mode()
    def __call__(self, codes: Tensor) -> Tensor:
        # cuDNN autotuning picks each convolution's fastest algorithm once per shape (the chunk
        # shape repeats), scoped to this call rather than set globally.
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=True,
                                        deterministic=torch.backends.cudnn.deterministic,
                                        allow_tf32=torch.backends.cudnn.allow_tf32):
            return self._decode(codes)

    def _decode(self, codes: Tensor) -> Tensor:
        # Flat (B, L) codes: the grid layout (B, h, w) would be a second input rank, so a second graph
        n, out = codes.shape[0], None
        codes = codes.reshape(n, -1)
        for start in range(0, n, self.chunk):
            part = codes[start : start + self.chunk]
            if part.shape[0] == 1:
                part = part.expand(2, *part.shape[1:])
            part = part.contiguous()
            if self.compiled:
                torch._dynamo.mark_dynamic(part, 0)
            images = self.decode_chunk(part)
            if out is None:
                out = images.new_empty(n, *images.shape[1:])
            out[start : start + self.chunk] = images[: min(self.chunk, n - start)]
        return out
