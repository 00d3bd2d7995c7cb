"""Training attention through FlexAttention block masks instead of a dense boolean mask.

Every training mask of the LLaMA paradigms (causal for raster AR, the proximity mask of NAR, the
group mask of PAR) is a fixed (S, S) boolean. SDPA with a dense boolean mask falls back to a
masked kernel that reads the mask for every (query, key) pair; a FlexAttention ``BlockMask``
records, per (query block, key block), whether the block is empty (skipped), full (no mask
reads) or partial (the mask is evaluated inside the kernel), so a block-sparse mask costs only
its visible blocks. ``enable_flex_training(model)`` switches every LLaMA ``Attention`` inside
``model``: a mask passed to it is turned into a ``BlockMask`` once (cached per mask tensor).

FlexAttention runs compiled on CUDA (the fast path); elsewhere it runs eagerly (its reference
implementation, slow but exact), which is what the CPU test compares with the dense-mask SDPA.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention


def block_mask_of(mask: Tensor, block_size: int = 128) -> BlockMask:
    """BlockMask equal to the boolean (S, S) ``mask`` (True = may attend), for any batch and head."""
    s_q, s_kv = mask.shape

    def mask_mod(b, h, q, kv):
        return mask[q, kv]

    return create_block_mask(mask_mod, None, None, s_q, s_kv, device=mask.device, BLOCK_SIZE=block_size,
                             _compile=False)


@functools.cache
def _compiled_flex():
    # Dynamic shapes: one compiled forward and backward serve every paradigm's sequence length
    # (AR / NAR 257, PAR 256, video), batch and head count; static shapes recompiled for each,
    # which dominated the bench's training-step rows.
    return torch.compile(flex_attention, dynamic=True)


def flex_masked_attention(q: Tensor, k: Tensor, v: Tensor, block_mask: BlockMask) -> Tensor:
    """q, k, v (B, H, S, D) -> (B, H, S, D) under ``block_mask``."""
    fn = _compiled_flex() if q.is_cuda else flex_attention
    return fn(q, k, v, block_mask=block_mask)


class FlexMasks:
    """Per-``Attention`` converter from dense masks to cached BlockMasks."""

    def __init__(self, block_size: int = 128):
        self.block_size = block_size
        self._cache: dict[tuple, BlockMask] = {}

    def __call__(self, mask: Tensor) -> BlockMask:
        key = (mask.data_ptr(), tuple(mask.shape), mask.device, mask._version)
        if key not in self._cache:
            self._cache[key] = block_mask_of(mask, self.block_size)
        return self._cache[key]


def enable_flex_training(module: nn.Module, block_size: int = 128) -> int:
    """Routes every masked LLaMA attention inside ``module`` through FlexAttention; returns how
    many attention layers were switched. One converter (and cache) is shared by all of them."""
    from nar_bench.nn.transformer import Attention

    masks = FlexMasks(block_size)
    layers = [m for m in module.modules() if isinstance(m, Attention)]
    for attn in layers:
        attn.flex_masks = masks
    return len(layers)


def disable_flex_training(module: nn.Module) -> None:
    from nar_bench.nn.transformer import Attention

    for m in module.modules():
        if isinstance(m, Attention):
            m.flex_masks = None
