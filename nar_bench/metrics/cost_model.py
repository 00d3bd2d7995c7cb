"""How far a measured point is from the hardware floor (gpt-fast style): FLOPs and bytes of a
generation, the device's measured ceilings, and achieved TFLOP/s, GB/s and % of the compute floor.

The model, stated once:
- FLOPs: every matrix product, convolution and attention that the eager generation executes,
  counted with ``torch.utils.flop_counter``'s formulas (2 per multiply-add; attention QK^T and PV)
  on the real operands, so CFG's doubled rows, NAR's second head and the KV-cache prefix lengths are
  all in. Elementwise work, top-k and sampling count no FLOPs.
- Bytes (the floor a perfectly fused implementation could reach): the operands and results of
  those same ops, each read or written once per call (weights once per decoding step, the filled
  KV-cache prefix once per step and layer, activations in and out); elementwise traffic is assumed
  fused away. It is a lower bound on traffic, not a measurement.
- Both are affine in the batch, ``cost(b) = fixed + b * per_image``, and one counted generation
  at batch 1 gives both parts: FLOPs all scale with the rows (no fixed part); an operand that is
  a parameter or buffer of the model (a weight, read once per call whatever the batch) is fixed,
  every other operand (activations, KV caches, logits) scales with the rows. The tests check this
  split against a generation counted at another batch size, for every paradigm.
- Compute floor: FLOPs / the measured bf16 matmul rate (``measure_ceilings``); % of floor =
  floor time / measured latency. Achieved GB/s = bytes / latency, next to the measured copy rate.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

aten = torch.ops.aten
# Ops the flop counter's registry lacks, mapped to the formula of an equivalent op.
_ALIASES = {aten.addmm_: aten.addmm, aten._scaled_dot_product_flash_attention_for_cpu:
            aten._scaled_dot_product_flash_attention}


def _formula(packet):
    return flop_registry.get(_ALIASES.get(packet, packet))


# Composite ops that may contain a matmul, convolution or attention: under inference mode they
# arrive undecomposed, so the counter decomposes them to reach those kernels. Other composites
# (casts, reshapes, norms, softmax, dropout) hold only elementwise work, which the model counts as
# free; running them whole keeps counting cheap (decomposing every one was ~4x the dispatches).
_MATMUL_COMPOSITES = {aten.linear, aten.matmul, aten.einsum, aten.bilinear, aten.tensordot,
                      aten.scaled_dot_product_attention, aten.conv1d, aten.conv2d, aten.conv3d,
                      aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d, aten.chain_matmul,
                      aten.linalg_multi_dot, aten.mv, aten.inner, aten.dot, aten.outer}


class CostCounter(TorchDispatchMode):
    """Counts FLOPs and operand/result bytes of matmuls, convolutions and attention run under it;
    bytes of tensors on a storage in ``fixed_storages`` (data pointers of weights) go to
    ``fixed_bytes``, the rest to ``bytes``."""

    def __init__(self, fixed_storages: frozenset[int] = frozenset()):
        super().__init__()
        self.fixed_storages = fixed_storages
        self.flops = 0
        self.bytes = 0
        self.fixed_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        formula = _formula(func._overloadpacket)
        if formula is None and func._overloadpacket in _MATMUL_COMPOSITES:
            # decomposed with the counter active, so their matmuls / attention kernels are counted
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
            # an attention mask without the query's batch dims (one (L, S) mask for every row) is
            # read once per call, like a weight: it does not grow with the batch
            masks = set()
            if "scaled_dot_product" in str(func):
                masks = {id(t) for t in tree_flatten((args[3:], kwargs))[0]
                         if isinstance(t, Tensor) and t.dim() < args[0].dim()}
            for t in tree_flatten((args, kwargs, out))[0]:
                if isinstance(t, Tensor) and t.dim() > 0:
                    nbytes = t.numel() * t.element_size()
                    if t.untyped_storage().data_ptr() in self.fixed_storages or id(t) in masks:
                        self.fixed_bytes += nbytes
                    else:
                        self.bytes += nbytes
        return out


@dataclass(frozen=True)
class Cost:
    """FLOPs and floor bytes of one batch: ``fixed + batch * per_image`` (see the module docstring)."""

    flops_fixed: float
    flops_per_image: float
    bytes_fixed: float
    bytes_per_image: float

    def flops(self, batch: int) -> float:
        return self.flops_fixed + batch * self.flops_per_image

    def bytes(self, batch: int) -> float:
        return self.bytes_fixed + batch * self.bytes_per_image


def weight_storages(*modules: nn.Module | None) -> frozenset[int]:
    """Data pointers of every parameter and buffer of ``modules``: the operands that are fixed."""
    return frozenset(t.untyped_storage().data_ptr() for m in modules if m is not None
                     for t in (*m.parameters(), *m.buffers()))


def count_cost(run, device: torch.device, fixed_storages: frozenset[int] = frozenset()) -> CostCounter:
    """The ``CostCounter`` that ``run()`` ran under."""
    counter = CostCounter(fixed_storages)
    with torch.inference_mode(), counter:
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return counter


def generation_cost(paradigm: nn.Module, sampling, decode_fn=None, device: torch.device | None = None,
                    decoder: nn.Module | None = None) -> Cost:
    """Cost of ``paradigm.generate`` (and ``decode_fn`` on its codes) per the module's model, from
    one generation at batch 1; ``decoder``: a module outside the paradigm whose weights it reads. Runs the eager engine
    (fused decode switched off while counting), so it counts the maths, not the kernels."""
    device = device or next(paradigm.parameters()).device
    fused = [(m, m.fused_decode) for m in paradigm.modules() if getattr(m, "fused_decode", None) is not None]
    for m, _ in fused:
        m.fused_decode = None

    def run() -> None:
        codes = paradigm.generate(torch.zeros(1, dtype=torch.long, device=device), sampling)
        if decode_fn is not None:
            decode_fn(codes)

    try:
        # Not cuDNN attention: it builds a plan for every new (rows, prefix length) shape (256 of
        # them in one AR-B generation); the other backends count the same
        # FLOPs on the same operands.
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            counted = count_cost(run, device, weight_storages(paradigm, decoder))
    finally:
        for m, fn in fused:
            m.fused_decode = fn
    return Cost(flops_fixed=0, flops_per_image=counted.flops, bytes_fixed=counted.fixed_bytes,
                bytes_per_image=counted.bytes)


@dataclass(frozen=True)
class Ceilings:
    matmul_tflops: float  # bf16 GEMM, measured
    copy_gbps: float  # device-to-device copy, bytes read + written


@functools.cache
def measure_ceilings(device: str = "cuda", n: int = 8192, copy_gib: float = 2.0, repeats: int = 10) -> Ceilings:
    """The device's bf16 matmul rate and copy bandwidth, measured once per process (random data,
    CUDA events, mean of ``repeats`` after 3 warm-ups)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ValueError("ceilings are measured on a CUDA device")
    a, b = (torch.randn(n, n, device=dev, dtype=torch.bfloat16) for _ in range(2))
    src = torch.randn(int(copy_gib * 2**30) // 4, device=dev)
    dst = torch.empty_like(src)

    def mean_seconds(fn) -> float:
        for _ in range(3):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / repeats

    tflops = 2 * n**3 / mean_seconds(lambda: a @ b) / 1e12
    gbps = 2 * src.numel() * src.element_size() / mean_seconds(lambda: dst.copy_(src)) / 1e9
    return Ceilings(matmul_tflops=tflops, copy_gbps=gbps)


def roofline(cost: Cost, batch: int, latency_s: float, ceilings: Ceilings | None) -> dict[str, float | None]:
    """Achieved TFLOP/s and GB/s of a point, and its % of the compute floor (None without ceilings)."""
    flops, nbytes = cost.flops(batch), cost.bytes(batch)
    out = {"gflop_per_image": flops / batch / 1e9, "tflops_s": flops / latency_s / 1e12,
           "gbps": nbytes / latency_s / 1e9, "floor_pct": None}
    if ceilings is not None:
        out["floor_pct"] = 100 * flops / (ceilings.matmul_tflops * 1e12) / latency_s
    return out
