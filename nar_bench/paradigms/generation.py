"""One generation path for every figure: codes from a paradigm, images from its tokenizer.

``GenerationEngine`` is what evaluation generates with (``lit.shard_sampling``: ``nar-bench
evaluate``, sweeps, the end-of-training evaluation) and what the bench times
(``metrics.efficiency``: random weights, no metrics). Two engines:

- ``eager``: ``paradigm.generate`` and ``tokenizer.decode`` as they are, on any device (in
  evaluation under the Trainer's precision, e.g. bf16 autocast).
- ``graph`` (CUDA): the paradigm's fused, compiled decode step (``Paradigm.compile_decoding``) and
  one CUDA graph of the whole generation per batch shape, whose per-sample noise keys are a static
  input (``nn.cuda_graph``); images from the tokenizer's ``FastDecoder`` (weights in the dtype,
  channels_last, Triton GroupNorm + SiLU, cuDNN's heuristic algorithms rather than timed ones). For
  evaluation it runs on copies cast to the dtype, so the model in memory (a sweep's, a training's)
  is left as it was.

``eval.engine=auto`` is ``graph`` on a GPU for a paradigm with ``compiled_decoding`` and a bf16 or
fp32 precision, else ``eager``; asking for ``graph`` where it cannot run is one error
(``resolve_engine``), never a silent fallback to other samples.

Invariance rule (``sample_codes``, ``decode``): the samples [first, first + n) of a shard are
generated in micro-batches of exactly ``batch_size`` rows starting at ``first``, the last one
filled up with the sample indices that follow (generated, then dropped), and decoded in chunks of
exactly ``decode_batch`` codes from the shard's first, the last chunk padded with copies of its
first code. Every kernel therefore sees the same shapes, and each sample the same row, whichever
process generates its shard, and no row depends on another row's values: shards are bit-identical
for any number of devices and any assignment of shards to them, given the settings recorded with
them (``nar_bench.evaluation.samples.engine_settings``: engine, dtype, batch_size, decode_batch, the
device model and the graph engine's decoder version).
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from nar_bench.errors import NarBenchError
from nar_bench.images import to_uint8
from nar_bench.nn.cuda_graph import GraphedGenerate, capture_generation, release_decode_state
from nar_bench.nn.noise import RowNoise
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.paradigms.base import Paradigm

ENGINES = ("auto", "eager", "graph")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# Lightning precision -> the dtype the graph engine casts weights to (it runs no autocast)
PRECISION_DTYPES = {"bf16-mixed": "bf16", "bf16-true": "bf16", "bf16": "bf16", "32-true": "fp32", "32": "fp32"}

DecodeFn = Callable[[Tensor], Tensor]  # codes (B, ...) -> images (B, 3, [T,] H, W) in [-1, 1]


def compile_seconds() -> float:
    """Seconds torch.compile has spent compiling in this process so far (Dynamo's timer, which
    covers tracing, Inductor and waiting for its kernel builds)."""
    from torch._dynamo.utils import cumulative_time_spent_ns

    return cumulative_time_spent_ns.get("entire_frame_compile", 0) / 1e9


def resolve_engine(name: str, paradigm: type[Paradigm], cuda: bool, precision: str) -> str:
    """``eval.engine`` -> ``eager`` | ``graph`` for a paradigm class on a GPU (``cuda``) or not,
    under Lightning ``precision``; a combination that cannot run is one NarBenchError."""
    if name not in ENGINES:
        raise NarBenchError(f"eval.engine='{name}' is not valid; choose one of: {', '.join(ENGINES)}")
    dtype = PRECISION_DTYPES.get(str(precision))
    if name == "auto":
        return "graph" if cuda and paradigm.compiled_decoding and dtype else "eager"
    if name == "graph":
        if not cuda:
            raise NarBenchError("eval.engine=graph replays CUDA graphs and needs a GPU (trainer.accelerator=gpu on a "
                                "machine with one); use eval.engine=eager (or auto) on a CPU")
        if not paradigm.compiled_decoding:
            raise NarBenchError(f"eval.engine=graph: paradigm '{paradigm.name}' has no compiled decode path "
                                "(Paradigm.compiled_decoding); use eval.engine=eager (or auto)")
        if dtype is None:
            raise NarBenchError(f"eval.engine=graph casts the weights to bf16 or fp32, but trainer.precision="
                                f"'{precision}' is neither: set trainer.precision=bf16-mixed or 32-true, or "
                                "eval.engine=eager")
    return name


@dataclass
class GenerationStats:
    """What an engine spent, cumulative; GPU work is synchronised before each clock read."""

    samples: int = 0  # samples generated and kept (padding rows excluded)
    rows: int = 0  # rows generated, padding included
    generate_s: float = 0.0  # generation after setup (graph replays, or eager generate calls)
    batch_s: list[float] = field(default_factory=list)  # seconds of each micro-batch of generate_s
    decoded: int = 0  # images decoded and kept
    decode_s: float = 0.0
    setup_s: float = 0.0  # copies, compilation, warm-up and graph capture
    compile_s: float = 0.0  # torch.compile's part of setup_s

    def speed(self) -> dict[str, float]:
        """generate / decode img/s, latency (median seconds per micro-batch) and the phase times."""
        out = {"setup_s": self.setup_s, "compile_s": self.compile_s, "generate_s": self.generate_s,
               "decode_s": self.decode_s}
        if self.generate_s > 0:
            out["generate_img_s"] = self.samples / self.generate_s
        if self.batch_s:
            out["latency_s"] = statistics.median(self.batch_s)
        if self.decode_s > 0:
            out["decode_img_s"] = self.decoded / self.decode_s
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class GenerationEngine:
    """Codes and images of ``paradigm`` at ``batch_size`` rows per generation (module docstring).

    ``graph``: the paradigm as given (on its CUDA device, in its dtype, compiled or not) is
    captured at the first batch; ``warm`` says it has generated with these settings at another
    batch size (capture without an eager pass first). ``decode``: codes -> images, called on
    exactly ``decode_batch`` codes (None: no images). ``for_evaluation`` builds the evaluation's."""

    def __init__(self, paradigm: Paradigm, sampling: SamplingConfig, batch_size: int, *, graph: bool = False,
                 decode: DecodeFn | None = None, decode_batch: int = 32, warm: bool = False,
                 engine: str | None = None, dtype: str | None = None):
        if batch_size < 1 or decode_batch < 1:
            raise NarBenchError(f"batch_size ({batch_size}) and decode_batch ({decode_batch}) must be positive")
        self.paradigm, self.sampling, self.batch_size = paradigm, sampling, batch_size
        self.graph, self.decode_fn, self.decode_batch, self.warm = graph, decode, decode_batch, warm
        self.engine, self.dtype = engine or ("graph" if graph else "eager"), dtype
        self.graphed: GraphedGenerate | None = None
        self.decoder_ready = not graph  # the graph engine's decoder is compiled at its first chunk
        self.stats = GenerationStats()

    @classmethod
    def for_evaluation(cls, paradigm: Paradigm, tokenizer: nn.Module, sampling: SamplingConfig, batch_size: int,
                       decode_batch: int, engine: str, dtype: str) -> GenerationEngine:
        """The engine ``resolve_engine`` chose: ``eager`` on the models as they are (``dtype`` is
        then the Trainer's precision, recorded only); ``graph`` on copies of them on their device,
        the paradigm's weights in ``dtype`` (bf16 | fp32) with its compiled decode step, the
        tokenizer's decoder a ``FastDecoder`` in ``dtype`` (VAR's next-scale inputs keep the
        tokenizer's own dtype, as in the bench)."""
        if engine == "eager":
            return cls(paradigm, sampling, batch_size, decode=tokenizer.decode, decode_batch=decode_batch,
                       engine=engine, dtype=dtype)
        from nar_bench.nn.fast_vae_decode import FastDecoder

        start, compiled = time.perf_counter(), compile_seconds()
        device = next(paradigm.parameters()).device
        # ordinary tensors (as the bench's), not inference tensors, whatever mode the caller is in; and
        # no autocast: the copies (and the decoder's folded weights) must not depend on the caller's
        with torch.inference_mode(False), torch.no_grad(), torch.autocast(device.type, enabled=False):
            model, generation_tokenizer = copy.deepcopy((paradigm, tokenizer))  # VAR's next scale: this copy
            model.requires_grad_(False).to(dtype=DTYPES[dtype])
            generation_tokenizer.requires_grad_(False)
            release_decode_state(model)  # the copied KV caches: the first generation allocates its own
            if not model.compile_decoding():
                raise NarBenchError(f"paradigm '{paradigm.name}' declares compiled_decoding but compiled nothing")
            # cuDNN's heuristic (not timed) choice of convolutions: the same in every process; VQ-16
            # compiled with the Triton norms inside and one CUDA graph per chunk (Tokenizer.graphed_decode)
            graphed = getattr(tokenizer, "graphed_decode", False)
            decoder = FastDecoder(copy.deepcopy(tokenizer).requires_grad_(False), DTYPES[dtype], chunk=decode_batch,
                                  compile=graphed, autotune=False, fused_norms=True, graph=graphed)
        out = cls(model, sampling, batch_size, graph=True, decode=decoder, decode_batch=decode_batch,
                  engine=engine, dtype=dtype)
        out.stats.setup_s, out.stats.compile_s = time.perf_counter() - start, compile_seconds() - compiled
        return out

    @property
    def device(self) -> torch.device:
        return next(self.paradigm.parameters()).device

    def prepare(self) -> None:
        """Captures the graph of this batch size (graph engine; once), timed as setup."""
        if not self.graph or self.graphed is not None:
            return
        if self.device.type != "cuda":
            raise NarBenchError("the graph engine needs the paradigm on a CUDA device; use the eager engine on a CPU")
        with self._timed_setup(self.device):
            self.graphed = capture_generation(self.paradigm, self.batch_size, self.sampling, self.warm)

    def prepare_decoder(self, codes: Tensor) -> None:
        """Graph engine: compiles and captures the decoder for its one chunk shape (``decode_batch``
        codes shaped as ``codes``' rows) once, timed as setup, its compilation as compile, so that
        decode img/s is the decoder's steady state."""
        if self.decoder_ready:
            return
        with self._timed_setup(codes.device):
            self.decode_fn(codes[:1].expand(self.decode_batch, *codes.shape[1:]))
        self.decoder_ready = True

    @contextlib.contextmanager
    def _timed_setup(self, device: torch.device) -> Iterator[None]:
        """Times the work inside (autocast off, to the device's last kernel) as setup, and the
        seconds torch.compile spent in it as compile."""
        start, compiled = time.perf_counter(), compile_seconds()
        with torch.autocast(device.type, enabled=False):
            yield
        _sync(device)
        self.stats.setup_s += time.perf_counter() - start
        self.stats.compile_s += compile_seconds() - compiled

    def batch_codes(self, labels: Tensor, keys: Tensor) -> Tensor:
        """Codes of one batch: labels (batch_size,) and RowNoise keys (batch_size,) on the device."""
        if len(labels) != self.batch_size:
            raise ValueError(f"the engine generates batches of {self.batch_size}, got {len(labels)} labels")
        if not self.graph:
            return self.paradigm.generate(labels, self.sampling, RowNoise(keys))
        self.prepare()
        with torch.autocast("cuda", enabled=False):
            return self.graphed(labels, keys)

    def sample_codes(self, first: int, count: int, seed: int, num_classes: int) -> Tensor:
        """Codes of samples first .. first + count - 1 (label i % num_classes, noise from (seed, i))
        in micro-batches of ``batch_size`` from ``first``, the last one filled up with the indices
        that follow (the invariance rule)."""
        device = self.device
        self.prepare()
        parts = []
        for start in range(first, first + count, self.batch_size):
            index = torch.arange(start, start + self.batch_size, device=device)
            clock = time.perf_counter()
            codes = self.batch_codes(index % num_classes, RowNoise.for_samples(seed, index).keys)
            _sync(device)
            seconds = time.perf_counter() - clock
            kept = min(self.batch_size, first + count - start)
            self.stats.generate_s += seconds
            self.stats.batch_s.append(seconds)
            self.stats.samples += kept
            self.stats.rows += self.batch_size
            parts.append(codes[:kept])
        return torch.cat(parts)

    def decode(self, codes: Tensor) -> Tensor:
        """uint8 images (n, 3, [T,] H, W) of codes (n, ...), decoded ``decode_batch`` at a time from
        the first code, the last chunk padded with copies of its first code (same shape every call)."""
        with self._timed_decode(codes):
            return torch.cat([images for _, images in self._decoded_chunks(codes)])

    def decode_to_host(self, codes: Tensor) -> np.ndarray:
        """``decode``'s images on the host in ADM's layout, (n, [T,] H, W, 3) uint8. From a GPU each
        chunk is copied into pinned memory on a side stream while the next chunk decodes, so the
        device-to-host copy (~200 MB per 1,000 images at 256 px) overlaps the decoding."""
        with self._timed_decode(codes):
            host, copies = None, None
            if codes.is_cuda:
                copies = torch.cuda.Stream(codes.device)
            for start, images in self._decoded_chunks(codes):
                images = images.movedim(1, -1)  # (k, [T,] H, W, 3): contiguous for channels_last images
                if host is None:
                    host = torch.empty(len(codes), *images.shape[1:], dtype=torch.uint8, pin_memory=copies is not None)
                if copies is None:
                    host[start:start + len(images)] = images
                    continue
                copies.wait_stream(torch.cuda.current_stream(codes.device))
                with torch.cuda.stream(copies):
                    host[start:start + len(images)].copy_(images, non_blocking=True)
                images.record_stream(copies)  # not reused by the next chunk before the copy has read it
            if copies is not None:
                copies.synchronize()
            return host.numpy()

    @contextlib.contextmanager
    def _timed_decode(self, codes: Tensor) -> Iterator[None]:
        """Prepares the decoder, then times the decode (to the device's last kernel) as decode_s."""
        if self.decode_fn is None:
            raise ValueError("this engine was built without a decoder")
        self.prepare_decoder(codes)
        clock = time.perf_counter()
        with torch.autocast(codes.device.type, enabled=False) if self.graph else contextlib.nullcontext():
            yield
        _sync(codes.device)
        self.stats.decode_s += time.perf_counter() - clock
        self.stats.decoded += len(codes)

    def _decoded_chunks(self, codes: Tensor) -> Iterator[tuple[int, Tensor]]:
        """(first index, uint8 images) of each chunk of ``decode_batch`` codes (the last padded)."""
        for start in range(0, len(codes), self.decode_batch):
            chunk = codes[start:start + self.decode_batch]
            pad = self.decode_batch - len(chunk)
            padded = torch.cat([chunk, chunk[:1].expand(pad, *chunk.shape[1:])]) if pad else chunk
            yield start, to_uint8(self.decode_fn(padded))[: len(chunk)]

