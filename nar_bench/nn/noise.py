"""Counter-based per-sample noise: sample i's random draws depend only on (seed, i, draw, position).

A ``torch.Generator`` hands out one stream to a whole batch, so a sample's noise depends on the
batch size, on its row in the batch and on which rank generated it. ``RowNoise`` instead hashes
(row key, draw counter, element index) with the splitmix64 finalizer in int64 tensor ops: the
same on CPU and CUDA, elementwise (no host sync, so CUDA-graph capturable), and row b's numbers
never depend on any other row. Pass a ``RowNoise`` wherever decoding takes a ``generator``; the
sampler (``nar_bench.nn.sampling._draw``) uses it for the exponential race, one draw per
decoding step.
"""

from __future__ import annotations

import torch
from torch import Tensor

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment: odd, so distinct counters give distinct keys
MIX1, MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(value: int) -> int:
    """A 64-bit pattern as the int64 that holds the same bits (torch scalars are signed)."""
    value &= MASK64
    return value - (1 << 64) if value >> 63 else value


def _shr(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 bit patterns (torch's ``>>`` is arithmetic: it copies the sign bit)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: Tensor) -> Tensor:
    """splitmix64's finalizer on int64 tensors (wrapping multiplication): a bijection of 64-bit
    patterns whose output bits each depend on every input bit."""
    x = (x ^ _shr(x, 30)) * _signed(MIX1)
    x = (x ^ _shr(x, 27)) * _signed(MIX2)
    return x ^ _shr(x, 31)


def mix64_int(x: int) -> int:
    """``mix64`` of one Python int (same bits), for keys computed on the host."""
    x &= MASK64
    x = ((x ^ (x >> 30)) * MIX1) & MASK64
    x = ((x ^ (x >> 27)) * MIX2) & MASK64
    return _signed(x ^ (x >> 31))


class RowNoise:
    """Noise source for a batch whose row b is sample ``index[b]`` of a run seeded with ``seed``.

    ``keys`` (B,) int64 on the batch's device. Every ``exponential`` call is one draw (one decoding
    step): it advances the draw counter, so a fresh ``RowNoise`` per ``generate`` call makes the
    k-th step's noise a function of (seed, sample index, k, position in the step) only.
    """

    def __init__(self, keys: Tensor):
        if keys.dtype != torch.int64 or keys.dim() != 1:
            raise ValueError(f"row keys must be a (B,) int64 tensor, got {keys.dtype} {tuple(keys.shape)}")
        self.keys = keys
        self.draws = 0

    @classmethod
    def for_samples(cls, seed: int, index: Tensor) -> RowNoise:
        """Rows for sample indices ``index`` (B,) of a run seeded with ``seed``."""
        return cls(mix64(index.long() * _signed(GOLDEN) + mix64_int(seed)))

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def bits(self, shape: tuple[int, ...]) -> Tensor:
        """(B, ...) int64 hashes for the next draw: element e of row b is mix(mix(key_b + draw) + e)."""
        if shape[0] != len(self.keys):
            raise ValueError(f"noise for {shape[0]} rows requested from a RowNoise of {len(self.keys)} rows")
        self.draws += 1
        row = mix64(self.keys + _signed(self.draws * GOLDEN))  # (B,)
        per_row = 1
        for size in shape[1:]:
            per_row *= size
        element = torch.arange(per_row, device=self.device, dtype=torch.int64)
        return mix64(row[:, None] + element * _signed(MIX1)).view(shape)

    def uniform(self, shape: tuple[int, ...]) -> Tensor:
        """(B, ...) float32 uniforms in the open interval (0, 1): the top 24 bits, centred."""
        return (_shr(self.bits(shape), 40).float() + 0.5) * 2.0**-24

    def exponential(self, shape: tuple[int, ...]) -> Tensor:
        """(B, ...) float32 Exp(1) draws (inverse CDF of ``uniform``)."""
        return -torch.log(self.uniform(shape))
