"""Efficiency protocol: latency, throughput and peak memory of generation, measured the same way
for every paradigm.

Per batch size: random class labels; ``warmup`` untimed runs (allocation, autotuning,
compilation); ``repeats`` timed runs, each bracketed by CUDA events (synchronised perf_counter on
CPU); latency = median seconds per batch, throughput = batch / latency. Peak GPU memory is reset
after warm-up, so it covers weights, caches and activations of the timed runs. ``batch_size``
counts images: with CFG on, the model runs on twice as many rows. A point that runs out of GPU
memory comes back with status "oom" instead of raising.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from nar_bench.errors import NarBenchError
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.nn.transformer import MODEL_SIZES, count_parameters
from nar_bench.paradigms.base import Paradigm
from nar_bench.provenance import device_name

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
    compiled: bool
    device: str
    torch: str
    status: str = "ok"  # ok | oom
    latency_s: float | None = None  # median seconds per batch
    latency_all: list[float] = field(default_factory=list)  # every timed repeat, warm-up excluded
    throughput_img_s: float | None = None
    peak_mem_gb: float | None = None  # GiB; None on CPU


def size_name(paradigm: Paradigm) -> str:
    """The MODEL_SIZES key matching the paradigm's backbone dims, else 'custom'."""
    cfg = paradigm.model_cfg
    dims = (getattr(cfg, "dim", None), getattr(cfg, "n_layers", None), getattr(cfg, "n_heads", None))
    return next((name for name, size in MODEL_SIZES.items() if size == dims), "custom")


def randomize_weights(module: nn.Module, std: float = 0.02) -> None:
    """Normal init of every matrix and embedding (parameters with >= 2 dims). Cost does not depend
    on weights, but zero-initialised output layers give all-equal logits, which would make top-k
    and sampling unrealistically trivial."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)


def autocast(device: torch.device, dtype: str):
    if dtype not in DTYPES:
        raise NarBenchError(f"unknown dtype '{dtype}'; choose one of: {', '.join(DTYPES)}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")


def release_decode_state(paradigm: nn.Module) -> None:
    """Drops the static KV caches (any ``kv_cache`` attribute) and, on GPU, the cached blocks, so
    the next point allocates from a clean state: a previous batch's caches would otherwise inflate
    its peak memory and could make it run out of memory early."""
    for m in paradigm.modules():
        if getattr(m, "kv_cache", None) is not None:
            m.kv_cache = None
    if torch.cuda.is_available():
        gc.collect()  # tensors held by reference cycles (e.g. an OOM traceback) go too
        torch.cuda.empty_cache()


def enable_compiled_decoding(paradigm: Paradigm) -> None:
    """Switches the paradigm to its compiled decode path (its ``compile_decoding()`` method)."""
    hook = getattr(paradigm, "compile_decoding", None)
    if hook is None:
        raise NarBenchError(f"paradigm '{paradigm.name}' has no compiled decode path (compile_decoding()); "
                            "set bench.compile=false")
    hook()


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


def generation_run(paradigm: Paradigm, labels: Tensor, sampling: SamplingConfig, dtype: str,
                   decode_fn: DecodeFn | None) -> Callable[[], None]:
    """One generation of ``labels`` (and decode, if given) under the dtype's autocast."""
    device = labels.device

    def run() -> None:
        with torch.inference_mode(), autocast(device, dtype):
            codes = paradigm.generate(labels, sampling)
            if decode_fn is not None:
                decode_fn(codes)

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
    compile: bool = False,
    size: str | None = None,
    seed: int = 0,
) -> EfficiencyResult:
    """Latency, throughput and peak memory of generating ``batch_size`` images (module docstring
    has the protocol). ``decode_fn`` (e.g. ``tokenizer.decode``) is timed with the generation;
    ``compile`` switches to the paradigm's compiled decode path first (warm-up runs compile it)."""
    if batch_size < 1 or warmup < 0 or repeats < 1:
        raise NarBenchError(f"need batch_size >= 1, warmup >= 0, repeats >= 1; got {batch_size}, {warmup}, {repeats}")
    device = resolve_device(paradigm, device)
    autocast(device, dtype)  # fails on an unknown dtype before anything runs
    if compile:
        enable_compiled_decoding(paradigm)
    result = EfficiencyResult(
        paradigm=paradigm.name, size=size or size_name(paradigm), params=count_parameters(paradigm),
        steps=paradigm.num_steps, batch_size=batch_size, dtype=dtype, cfg=sampling.uses_cfg,
        tokenizer_decode=decode_fn is not None, compiled=compile, device=device_name(device),
        torch=torch.__version__,
    )
    release_decode_state(paradigm)
    run = generation_run(paradigm, random_labels(paradigm, batch_size, device, seed), sampling, dtype, decode_fn)
    cuda = device.type == "cuda"
    try:
        for _ in range(warmup):
            run()
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
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
    return result


def measure_batch_sizes(paradigm: Paradigm, batch_sizes: Iterable[int], sampling: SamplingConfig,
                        **protocol) -> Iterator[EfficiencyResult]:
    """``measure_generation`` at each batch size in ascending order; stops after the first point
    that runs out of memory (yielded with status 'oom': the model's limit)."""
    for batch_size in sorted(set(batch_sizes)):
        result = measure_generation(paradigm, batch_size, sampling, **protocol)
        yield result
        if result.status == "oom":
            return


def find_max_batch(paradigm: Paradigm, batch_sizes: Iterable[int], sampling: SamplingConfig,
                   **protocol) -> tuple[int | None, list[EfficiencyResult]]:
    """Largest batch size that fits (None if none does) and every measured point."""
    results = list(measure_batch_sizes(paradigm, batch_sizes, sampling, **protocol))
    fits = [r.batch_size for r in results if r.status == "ok"]
    return (max(fits) if fits else None), results


def profile_generation(paradigm: Paradigm, batch_size: int, sampling: SamplingConfig, dtype: str = "bf16", *,
                       warmup: int = 1, row_limit: int = 20, decode_fn: DecodeFn | None = None,
                       device: torch.device | str | None = None) -> str:
    """torch.profiler table of one generation after warm-up: the top ``row_limit`` ops by total
    CUDA time (CPU time on CPU), to show where the time goes."""
    device = resolve_device(paradigm, device)
    release_decode_state(paradigm)
    run = generation_run(paradigm, random_labels(paradigm, batch_size, device), sampling, dtype, decode_fn)
    for _ in range(warmup):
        run()
    cuda = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        run()
        if cuda:
            torch.cuda.synchronize(device)
    sort_by = "cuda_time_total" if cuda else "cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=row_limit)
