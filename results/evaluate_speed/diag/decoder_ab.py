"""VQ-16 decode at 256 px on the GPU: img/s of FastDecoder variants (eager Triton norms / Inductor,
chunk 64 / 128, cuDNN heuristic / autotuned, with and without a CUDA graph per chunk), bytes of the
graphed variants against their eager form, and a kernel-kind profile of the fastest.
    python results/evaluate_speed/diag/decoder_ab.py OUT_DIR          # every variant (first call)
    python results/evaluate_speed/diag/decoder_ab.py OUT_DIR eval     # the evaluation's decoder, +fold
    python results/evaluate_speed/diag/decoder_ab.py OUT_DIR biases   # ... as before / after the deferred
                                                                      # biases and the affine kernel
(The first call ran an earlier form of this file whose CUDA graph was a class here; FastDecoder(graph=True)
is that class moved into the library.)
"""
import contextlib
import copy
import json
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from nar_bench.config import load_config  # noqa: E402
from nar_bench.nn import group_norm  # noqa: E402
from nar_bench.nn.conv_blocks import ConvDecoder, Upsample2x  # noqa: E402
from nar_bench.nn.fast_vae_decode import FastDecoder  # noqa: E402
from nar_bench.tokenizers import build_tokenizer  # noqa: E402

OUT = Path(sys.argv[1])
OUT.mkdir(parents=True, exist_ok=True)
N = 256


def torch_group_affine(mean, m2, pixels, rows_per_program, weight, bias, input_bias, groups, eps):
    """``group_norm.group_affine`` as it was before the affine kernel (torch ops, ~30 small kernels per
    norm; commit aab373d), for the A/B."""
    b, p, c = mean.shape
    counts = (pixels - torch.arange(p, device=mean.device) * rows_per_program).clamp(max=rows_per_program)
    if input_bias is not None:
        mean = mean + input_bias.float()
    mean, m2 = mean.view(b, p, groups, c // groups), m2.view(b, p, groups, c // groups)
    n = counts.to(mean.dtype).view(1, p, 1, 1)
    total = n.sum() * (c // groups)
    group_mean = (mean * n).sum((1, 3)) / total
    spread = (n * (mean - group_mean[:, None, :, None]).square()).sum((1, 3))
    var = (m2.sum((1, 3)) + spread) / total
    scale = torch.rsqrt(var + eps).repeat_interleave(c // groups, 1) * weight.float()
    offset = group_mean.repeat_interleave(c // groups, 1)
    if input_bias is not None:
        offset = offset - input_bias.float()
    return scale, bias.float() - offset * scale


def timed(fn, codes, reps=3):
    for _ in range(2):
        fn(codes)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(codes)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return N / sorted(times)[len(times) // 2]


def main():
    cfg = load_config(None, ["data.image_size=256", "data.grid_size=16", "tokenizer.name=vq",
                             "tokenizer.options.preset=vq_ds16", "tokenizer.untrained=true"])
    torch.manual_seed(0)
    base = build_tokenizer(cfg).cuda().eval()
    codes = torch.randint(0, base.code_space.vocab_size, (N, 256), device="cuda")
    rows, outputs, fns = [], {}, {}

    def variant(name, chunk, compile, autotune, graph, fused_compiled=False, fold=False, keep_biases=False,
                torch_merge=False):
        # torch_merge: the norms' merge as torch ops (before the affine kernel); its kernels are
        # captured into the variant's CUDA graphs while it is patched in, i.e. during the timing's warm-up
        merge = mock.patch.object(group_norm, "group_affine", torch_group_affine)
        with merge if torch_merge else contextlib.nullcontext():
            return timed_variant(name, chunk, compile, autotune, graph, fused_compiled, fold, keep_biases)

    def timed_variant(name, chunk, compile, autotune, graph, fused_compiled, fold, keep_biases):
        torch.cuda.empty_cache()
        torch._dynamo.reset()  # each variant compiles its own decode (no reuse, no recompile limit)
        tok = copy.deepcopy(base).requires_grad_(False)
        if fold:
            for m in tok.modules():
                if isinstance(m, Upsample2x):
                    m.fold_phases()
        # keep_biases: the decoder as before ConvDecoder.defer_biases (every convolution adds its own bias)
        kept = mock.patch.object(ConvDecoder, "defer_biases", lambda self: None)
        with kept if keep_biases else contextlib.nullcontext():
            dec = FastDecoder(tok, torch.bfloat16, chunk=chunk, compile=compile, autotune=autotune,
                              fused_norms=fused_compiled or not compile, graph=graph)
        fn = dec
        try:
            with torch.inference_mode():
                img_s = timed(fn, codes)
                outputs[name] = fn(codes[:chunk]).float().cpu()
            row = {"variant": name, "chunk": chunk, "compile": compile, "autotune": autotune, "graph": graph,
                   "fused_norms_compiled": fused_compiled, "img_s": round(img_s, 1)}
        except Exception as err:  # noqa: BLE001 - a variant that cannot run is a row, not the end
            row = {"variant": name, "error": f"{type(err).__name__}: {str(err)[:300]}"}
        rows.append(row)
        fns[name] = fn
        print(json.dumps(row), flush=True)
        (OUT / "decoder_ab.jsonl").open("a").write(json.dumps(row) + "\n")
        return fn

    def profiled(name):
        from torch.profiler import ProfilerActivity, profile
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
            fns[name](codes)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90)
        (OUT / f"profile_{name}.txt").write_text(f"{name}\n{table}")

    if len(sys.argv) > 2 and sys.argv[2] == "biases":  # the evaluation's decoder: biases deferred or kept
        before = "eval_decoder_c64_kept_biases_torch_merge"  # the decoder of commit b924681
        for name, extra in [(before, {"keep_biases": True, "torch_merge": True}),
                            ("eval_decoder_c64_torch_merge", {"torch_merge": True}),  # aab373d
                            ("eval_decoder_c64", {}),  # deferred biases and the affine kernel
                            (before + "_again", {"keep_biases": True, "torch_merge": True}),
                            ("eval_decoder_c64_again", {}), ("eval_decoder_c64_fold", {"fold": True})]:
            variant(name, 64, True, False, True, fused_compiled=True, **extra)
        for name in (before, "eval_decoder_c64_torch_merge", "eval_decoder_c64", "eval_decoder_c64_fold"):
            if name in outputs:
                diff = (outputs[name] - outputs[before]).abs()
                line = {"compare": f"{name} vs {before}", "max": diff.max().item(), "mean": diff.mean().item()}
                print(json.dumps(line), flush=True)
                (OUT / "decoder_ab.jsonl").open("a").write(json.dumps(line) + "\n")
                profiled(name)
        return
    if len(sys.argv) > 2 and sys.argv[2] == "eval":  # the evaluation's decoder as built, and with the fold
        variant("eval_decoder_c64", 64, True, False, True, fused_compiled=True)
        variant("eval_decoder_c64_fold", 64, True, False, True, fused_compiled=True, fold=True)
        return
    variant("eager_triton_c64", 64, False, False, False)
    variant("eager_triton_c128", 128, False, False, False)
    variant("eager_triton_c64_autotune", 64, False, True, False)
    variant("eager_triton_c64_graph", 64, False, False, True)
    variant("eager_triton_c128_graph", 128, False, False, True)
    variant("inductor_c64", 64, True, False, False)
    variant("inductor_c64_graph", 64, True, False, True)
    variant("inductor_fusednorm_c64_graph", 64, True, False, True, fused_compiled=True)
    variant("inductor_fusednorm_c128_graph", 128, True, False, True, fused_compiled=True)
    for a, b in [("eager_triton_c64", "eager_triton_c64_graph"), ("inductor_c64", "inductor_c64_graph")]:
        if a in outputs and b in outputs:
            diff = (outputs[a] - outputs[b]).abs().max().item()
            line = f"bytes {a} vs {b}: {'identical' if diff == 0 else f'DIFFER max {diff}'}"
            print(line, flush=True)
            (OUT / "decoder_ab.jsonl").open("a").write(json.dumps({"compare": line}) + "\n")
    # profile the fastest runnable variant
    best = max((r for r in rows if "img_s" in r), key=lambda r: r["img_s"])
    print("fastest:", best["variant"], flush=True)
    from torch.profiler import ProfilerActivity, profile
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        fns[best["variant"]](codes)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)
    (OUT / "decoder_profile.txt").write_text(f"{best['variant']}\n{table}")
    print(table, flush=True)


if __name__ == "__main__":
    main()
