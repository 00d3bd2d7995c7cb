"""Fast decode of codes to images for the convolutional tokenizers (LlamaGen's VQ-16, VAR's msvq).

``FastDecoder(tokenizer, dtype)`` runs ``tokenizer.decode`` with weights in bf16, 4-D weights and
activations channels_last (cuDNN's tensor-core layout), the cuDNN convolutions autotuned
(``cudnn.benchmark`` inside the call; ``autotune=False`` keeps cuDNN's heuristic choice, which
unlike a timed one is the same in every process: evaluation's shards must not depend on which
process decoded them), in these forms:

- ``compile=True``: compiled by torch.compile, with static kernels for each chunk shape. Alone
  (the bench's decoder), Inductor fuses each GroupNorm + SiLU with the convolution's bias and the
  residual add around it into its own Triton kernels.
- ``fused_norms`` (default: ``not compile``): every GroupNorm (+ SiLU) runs the Triton
  channels_last kernels of ``nar_bench.nn.group_norm`` (eager GroupNorm copies channels_last
  activations to NCHW and back; Inductor's reductions read a group's channels strided by the row).
  Compiled with them inside and one CUDA graph per chunk (``graph=True``) is the evaluation's VQ-16
  decoder, the fastest measured (results/evaluate_speed/diag/README.md). With them, every
  convolution whose output only a norm or a res block reads leaves its bias to that reader
  (``ConvDecoder.defer_biases``): the same function, rounded differently (the bias is added in
  fp32 where it is read instead of being rounded into the convolution's output first).
- ``compile=False``: eager; every nearest-upsample + conv also runs in its sub-pixel form
  (``Upsample2x.fold_phases``: 4/9 of the multiply-adds), which makes the uncompiled VAR VAE decode
  faster (results/throughput_decoder/README.md).

Batches are decoded in chunks of at most ``chunk`` images, so memory stays bounded whatever the
batch (no OOM at large batches); a chunk of one image is padded to two (size 1 would specialise).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nar_bench.nn.conv_blocks import ConvDecoder, Upsample2x
from nar_bench.nn.group_norm import GroupNorm

# The version of the fast decoder's arithmetic, raised by every change that alters its bytes (2: the
# deferred biases and the norms' affine kernel). The graph engine's shards record it, so a resumed run
# refuses to mix images of two versions.
VERSION = 2


class FastDecoder:
    """codes (B, ...) -> images (B, 3, H, W) in the tokenizer's range, in ``dtype``. Codes are
    passed to ``tokenizer.decode`` flattened to (B, L), which it reads in its configured layout."""

    def __init__(self, tokenizer: nn.Module, dtype: torch.dtype = torch.bfloat16, chunk: int = 64,
                 compile: bool = True, autotune: bool = True, fused_norms: bool | None = None,
                 graph: bool = False):
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1; got {chunk}")
        fused_norms = not compile if fused_norms is None else fused_norms
        if fused_norms:  # the fused norms add the biases they are handed without another pass
            for module in tokenizer.modules():
                if isinstance(module, ConvDecoder):
                    module.defer_biases()
        for module in tokenizer.modules():
            if isinstance(module, Upsample2x) and not compile:
                module.fold_phases()  # from the weights as loaded, before the cast: rounded once
            if isinstance(module, GroupNorm):
                module.fused = fused_norms
        tokenizer.to(dtype=dtype, memory_format=torch.channels_last).eval()
        self.tokenizer, self.chunk, self.compiled, self.autotune = tokenizer, chunk, compile, autotune
        self.decode_chunk = torch.compile(tokenizer.decode, dynamic=False) if compile else tokenizer.decode
        self.graph = graph
        self.graphs: dict[tuple[int, ...], ChunkGraph] = {}

    @torch.inference_mode()
    def __call__(self, codes: Tensor) -> Tensor:
        # cuDNN autotuning picks each convolution's fastest algorithm once per shape (the chunk
        # shape repeats), scoped to this call rather than set globally.
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=self.autotune,
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
            # Compiled, every chunk shape (the full chunk, the remainder) gets its own static-shape
            # kernels, graphed or not: a dynamic-batch compile picks other kernels that round differently,
            # so a replay equals the uncaptured decode only if both are compiled for the same shape.
            images = self.chunk_graph(part)(part) if self.graph and part.is_cuda else self.decode_chunk(part)
            if out is None:
                out = images.new_empty(n, *images.shape[1:])
            out[start : start + self.chunk] = images[: min(self.chunk, n - start)]
        return out

    def chunk_graph(self, part: Tensor) -> ChunkGraph:
        """The CUDA graph of ``part``'s shape (captured at its first use)."""
        key = tuple(part.shape)
        if key not in self.graphs:
            self.graphs[key] = ChunkGraph(self.decode_chunk, part)
        return self.graphs[key]


class ChunkGraph:
    """``decode(codes)`` of one codes shape as a CUDA graph: the codes are copied into a static
    input, one replay runs every kernel of the decoder (VQ-16: ~300 launches per chunk, whose host
    cost dominates the small 16-32 px layers). The replay runs the captured kernels themselves, so
    its images are those of the uncaptured call, bit for bit."""

    def __init__(self, decode, example: Tensor, warmup: int = 2):
        self.codes = example.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compiles, picks kernels and allocates outside the capture
            for _ in range(warmup):
                decode(self.codes)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.images = decode(self.codes)

    def __call__(self, codes: Tensor) -> Tensor:
        self.codes.copy_(codes)
        self.graph.replay()
        return self.images.clone()
