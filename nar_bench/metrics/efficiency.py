"""Efficiency protocol: latency, throughput and peak memory of generation, measured the same way
for every paradigm.

Generation runs through the evaluation's own engine (``paradigms.generation.GenerationEngine``:
the same fused step, CUDA graph and per-sample noise that ``nar-bench evaluate`` samples with), so
the bench is the evaluation with random weights and no metrics.

Per batch size: random class labels, the noise of samples 0 .. B-1; ``warmup`` untimed runs (allocation, autotuning,
compilation); ``repeats`` timed runs, each bracketed by CUDA events (synchronised perf_counter on
CPU); latency = median seconds per batch, throughput = batch / latency. Peak GPU memory is reset
before the setup (after the previous batch's caches are freed), so it covers weights, caches and
activations of the warm-up, the graph capture and the timed runs: a CUDA graph's activations live
in its private pool, allocated during capture, and replay allocates nothing the counter would see. ``batch_size``
counts images: with CFG on, the model runs on twice as many rows. A point that runs out of GPU
memory comes back with status "oom" instead of raising.

Given a ``Cost`` (``nar_bench.metrics.cost_model``: FLOPs and floor bytes per batch, its docstring
states the model) and the device's measured ``Ceilings``, a point also reports achieved TFLOP/s,
GB/s and % of the compute floor. ``setup_s`` is the wall time before the first timed run (graph
capture, warm-up runs, and compilation when compiled); ``compile_s`` is the part of it torch.compile
spent compiling (Dynamo's own cumulative timer, so host-side passes and graph capture are not
counted as compilation), reported for compiled points only: 0 when every graph was reused.
"""

from __future__ import annotations

import gc
import re
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from nar_bench.errors import NarBenchError
from nar_bench.metrics.cost_model import Ceilings, Cost, roofline
from nar_bench.nn.cuda_graph import capture_generation, release_decode_state  # noqa: F401  (the bench's names)
from nar_bench.nn.noise import RowNoise
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.nn.transformer import count_parameters, size_name
from nar_bench.paradigms.base import Paradigm
from nar_bench.paradigms.generation import GenerationEngine, compile_seconds
from nar_bench.tracking.provenance import device_name

DTYPES = ("bf16", "fp32")
GIB = 2**30

DecodeFn = Callable[[Tensor], Tensor]  # codes (B, *grid) -> images (B, 3, H, W)


@dataclass
class EfficiencyResult:
    paradigm: str
    size: str
    params: int
    steps: int
    batch_size: int  # images per batch (the model sees 2x rows with CFG)
    dtype: str
    cfg: bool
    tokenizer_decode: bool  # latency includes decoding codes to images
    cuda_graph: bool  # whole generation replayed from one CUDA graph
    compiled: bool  # per-step forward compiled with torch.compile
    device: str
    torch: str
    status: str = "ok"  # ok | oom
    latency_s: float | None = None  # median seconds per batch
    latency_all: list[float] = field(default_factory=list)  # every timed repeat, warm-up excluded
    throughput_img_s: float | None = None
    peak_mem_gb: float | None = None  # GiB; None on CPU
    setup_s: float | None = None  # graph capture + warm-up (+ compilation), before the timed runs
    compile_s: float | None = None  # torch.compile time within setup_s; compiled points only
    gflop_per_image: float | None = None  # with a Cost: FLOPs of the batch / batch_size
    tflops_s: float | None = None  # achieved
    gbps: float | None = None  # floor bytes / latency
    floor_pct: float | None = None  # compute floor (FLOPs / measured matmul rate) / latency, in %


def model_size_name(paradigm: Paradigm) -> str:
    """The MODEL_SIZES key of the paradigm's backbone dims, else 'custom'."""
    cfg = paradigm.model_cfg
    return size_name(cfg.dim, cfg.n_layers, cfg.n_heads) or "custom"


def randomize_weights(module: nn.Module, std: float = 0.02) -> None:
    """Normal init of every matrix and embedding (parameters with >= 2 dims). Cost does not depend
    on weights, but zero-initialised output layers give all-equal logits, which would make top-k
    and sampling unrealistically trivial."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)


def inference_dtype(dtype: str) -> torch.dtype:
    """Weights and activations are cast to this dtype, as the official sample scripts do."""
    if dtype not in DTYPES:
        raise NarBenchError(f"unknown dtype '{dtype}'; choose one of: {', '.join(DTYPES)}")
    return torch.bfloat16 if dtype == "bf16" else torch.float32


def inference_decoder(tokenizer: nn.Module, dtype: str, compile: bool = False, chunk: int = 64) -> DecodeFn:
    """The tokenizer's decode as benchmarked (``nar_bench.nn.fast_vae_decode.FastDecoder``): weights
    in the inference dtype, 4-D (conv) weights in channels_last, the layout cuDNN's tensor-core
    convolutions run fastest in, the channels_last GroupNorm kernels and sub-pixel upsampling,
    decoded in chunks of ``chunk`` images; ``compile`` also compiles it (one graph for every batch size)."""
    from nar_bench.nn.fast_vae_decode import FastDecoder

    return FastDecoder(tokenizer, inference_dtype(dtype), chunk=chunk, compile=compile)


def reset_device_memory(device: torch.device | str | None = None) -> None:
    """Frees what unreachable objects hold and resets the peak counter: call before each model so
    its peak memory does not include what the previous model left allocated."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds ``fn()`` takes on ``device``: CUDA events on GPU (queue drained first), perf_counter
    on CPU."""
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def random_labels(paradigm: Paradigm, batch_size: int, device: torch.device, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(paradigm.model_cfg.num_classes, (batch_size,), generator=gen).to(device)


def generation_run(paradigm: Paradigm, labels: Tensor, sampling: SamplingConfig, decode_fn: DecodeFn | None,
                   cuda_graph: bool, warm: bool = False, seed: int = 0) -> Callable[[], None]:
    """One generation of ``labels`` (and decode, if given) through the evaluation's engine
    (``paradigms.generation.GenerationEngine``), the rows' noise that of samples 0 .. B-1 of
    ``seed``. With ``cuda_graph`` the whole generation is captured once (here) and replayed by
    each call; ``warm`` (the paradigm has generated at another batch size) captures it without an
    eager pass first."""
    if cuda_graph and labels.device.type != "cuda":
        raise NarBenchError("bench.cuda_graph needs a CUDA device; set bench.cuda_graph=false on CPU")
    engine = GenerationEngine(paradigm, sampling, len(labels), graph=cuda_graph, decode=decode_fn,
                              decode_batch=len(labels), warm=warm)
    engine.prepare()
    keys = RowNoise.for_samples(seed, torch.arange(len(labels), device=labels.device)).keys

    def run() -> None:
        with torch.inference_mode():
            codes = engine.batch_codes(labels, keys)
            if decode_fn is not None:
                engine.decode(codes)

    return run


def resolve_device(paradigm: Paradigm, device: torch.device | str | None) -> torch.device:
    """``device``, or the paradigm's when None; the paradigm is moved there."""
    device = torch.device(device) if device is not None else next(paradigm.parameters()).device
    paradigm.to(device)
    return device


def measure_generation(
    paradigm: Paradigm,
    batch_size: int,
    sampling: SamplingConfig,
    *,
    dtype: str = "bf16",
    warmup: int = 1,
    repeats: int = 3,
    decode_fn: DecodeFn | None = None,
    device: torch.device | str | None = None,
    cuda_graph: bool = False,
    compile: bool = False,
    size: str | None = None,
    seed: int = 0,
    cost: Cost | None = None,
    ceilings: Ceilings | None = None,
    warm: bool = False,
) -> EfficiencyResult:
    """Latency, throughput and peak memory of generating ``batch_size`` images (module docstring
    has the protocol). ``decode_fn`` (e.g. ``tokenizer.decode``) is timed with the generation;
    ``cuda_graph`` captures the whole generation in a CUDA graph before the warm-up runs;
    ``compile`` compiles the per-step forward first (``paradigm.compile_decoding()``; a paradigm without a
    compiled path is timed eager and recorded compiled=False); ``cost`` and
    ``ceilings`` (``nar_bench.metrics.cost_model``) add the roofline columns; ``warm`` says the
    paradigm has just generated with the same settings at another batch size (no eager pass before
    the capture)."""
    if batch_size < 1 or warmup < 0 or repeats < 1:
        raise NarBenchError(f"need batch_size >= 1, warmup >= 0, repeats >= 1; got {batch_size}, {warmup}, {repeats}")
    device = resolve_device(paradigm, device)
    paradigm.to(dtype=inference_dtype(dtype))  # fails on an unknown dtype before anything runs
    compiled = compile and paradigm.compile_decoding()  # False: this paradigm has no compiled path
    result = EfficiencyResult(
        paradigm=paradigm.name, size=size or model_size_name(paradigm), params=count_parameters(paradigm),
        steps=paradigm.num_steps, batch_size=batch_size, dtype=dtype, cfg=sampling.uses_cfg,
        tokenizer_decode=decode_fn is not None, cuda_graph=cuda_graph, compiled=compiled,
        device=device_name(device),
        torch=torch.__version__,
    )
    release_decode_state(paradigm)
    labels = random_labels(paradigm, batch_size, device, seed)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    try:
        setup_start, compiled_before = time.perf_counter(), compile_seconds()
        run = generation_run(paradigm, labels, sampling, decode_fn, cuda_graph, warm, seed)
        for _ in range(warmup):
            run()
        if cuda:
            torch.cuda.synchronize(device)
        setup_s, compile_s = time.perf_counter() - setup_start, compile_seconds() - compiled_before
        times = [timed(run, device) for _ in range(repeats)]
    except torch.cuda.OutOfMemoryError:
        result.status = "oom"
    if result.status == "oom":  # outside the except block, so the traceback's tensors are gone
        release_decode_state(paradigm)
        return result
    result.latency_s = statistics.median(times)
    result.latency_all = times
    result.throughput_img_s = batch_size / result.latency_s
    result.peak_mem_gb = torch.cuda.max_memory_allocated(device) / GIB if cuda else None
    result.setup_s = setup_s
    if compiled:
        result.compile_s = compile_s
    if cost is not None:
        for key, value in roofline(cost, batch_size, result.latency_s, ceilings).items():
            setattr(result, key, value)
    return result


def measure_batch_sizes(paradigm: Paradigm, batch_sizes: Iterable[int], sampling: SamplingConfig,
                        **protocol) -> Iterator[EfficiencyResult]:
    """``measure_generation`` at each batch size in ascending order; stops after the first point
    that runs out of memory (yielded with status 'oom': the model's limit). Batches after the
    first are measured warm (their CUDA graph captured without an eager pass first)."""
    for i, batch_size in enumerate(sorted(set(batch_sizes))):
        result = measure_generation(paradigm, batch_size, sampling, warm=i > 0, **protocol)
        yield result
        if result.status == "oom":
            return


def find_max_batch(paradigm: Paradigm, batch_sizes: Iterable[int], sampling: SamplingConfig,
                   **protocol) -> tuple[int | None, list[EfficiencyResult]]:
    """Largest batch size that fits (None if none does) and every measured point."""
    results = list(measure_batch_sizes(paradigm, batch_sizes, sampling, **protocol))
    fits = [r.batch_size for r in results if r.status == "ok"]
    return (max(fits) if fits else None), results


# Kernel (GPU) or op (CPU) name -> kind, first match wins: what the profile breakdown names.
# Inductor's fused kernels (triton_poi / triton_red / triton_per) are named after every op they fuse,
# so they are a norm when they hold a norm or its rsqrt, otherwise elementwise / reduction: never a
# convolution or a copy (in "triton_poi_fused_add_clone_convolution_silu" the convolution is its bias
# add and the clone a layout the kernel writes); Inductor's GEMM templates (triton_tem) are GEMMs.
# Convolutions come before GEMMs (cuDNN's implicit-GEMM kernels say fprop).
KERNEL_KINDS = (
    ("attention", r"attention|flash|fmha|sdpa|softmax_backward"),
    ("norm", r"rms_norm|layer_norm|group_norm|batch_norm|^triton_\w*rsqrt"),
    ("convolution", r"^(?!triton_).*(conv|fprop|dgrad|wgrad|cudnn)"),
    ("GEMM", r"gemm|nvjet|cutlass|xmma|wgmma|aten::(add|b)?mm\b|aten::matmul|aten::linear|_mm_|triton_tem"),
    ("top-k / sort", r"topk|sort|radix"),
    ("copy / cast", r"^(?!triton_).*(memcpy|memset|copy|cat|index|scatter|gather|transpose|contiguous)"),
    ("elementwise / reduction", r"."),
)


def kernel_kind(name: str) -> str:
    return next(kind for kind, pattern in KERNEL_KINDS if re.search(pattern, name, re.IGNORECASE))


def time_by_kind(events, cuda: bool) -> str:
    """Self time of the profiled kernels (CUDA) or ops (CPU) summed per ``KERNEL_KINDS`` kind, as a
    small table: kind, ms, % of the total, calls."""
    totals: dict[str, list[float]] = {}
    for event in events:
        self_us = event.self_device_time_total if cuda else event.self_cpu_time_total
        if self_us <= 0:
            continue
        kind = totals.setdefault(kernel_kind(event.key), [0.0, 0])
        kind[0] += self_us
        kind[1] += event.count
    whole = sum(us for us, _ in totals.values()) or 1.0
    lines = [f"{'kind':<24}{'ms':>10}{'%':>8}{'calls':>9}"]
    for kind, (us, calls) in sorted(totals.items(), key=lambda item: -item[1][0]):
        lines.append(f"{kind:<24}{us / 1e3:>10.3f}{100 * us / whole:>8.1f}{calls:>9}")
    return "\n".join(lines)


def profile_generation(paradigm: Paradigm, batch_size: int, sampling: SamplingConfig, dtype: str = "bf16", *,
                       warmup: int = 1, row_limit: int = 20, decode_fn: DecodeFn | None = None,
                       device: torch.device | str | None = None) -> str:
    """torch.profiler tables of one generation after warm-up, to show where the time goes: on a GPU
    the kernels' time by kind (``time_by_kind``) and the top ``row_limit`` kernels by total GPU time
    (GPU activity only: recording every CPU-side op too made AR-B's profile a large part of a
    sweep), on a CPU the same for ops by CPU time."""
    device = resolve_device(paradigm, device)
    paradigm.to(dtype=inference_dtype(dtype))
    release_decode_state(paradigm)
    run = generation_run(paradigm, random_labels(paradigm, batch_size, device), sampling, decode_fn, False)
    for _ in range(warmup):
        run()
    cuda = device.type == "cuda"
    activity = torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU
    with torch.profiler.profile(activities=[activity]) as prof:
        run()
        if cuda:
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    sort_by = "cuda_time_total" if cuda else "cpu_time_total"
    return f"{time_by_kind(events, cuda)}\n\n{events.table(sort_by=sort_by, row_limit=row_limit)}"
