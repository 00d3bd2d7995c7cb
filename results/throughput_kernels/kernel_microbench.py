"""GPU microbenchmarks (CUDA-graph timing): decode attention tile configs; SwiGLU at small M."""
import os, sys
import torch
import triton
from triton.testing import do_bench_cudagraph
from nar_bench.nn import swiglu_gemm as sg
from nar_bench.nn import fused_decode as fd

out_dir = sys.argv[1]
log = open(os.path.join(out_dir, "micro2.txt"), "a")
def say(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True); log.write(s + "\n"); log.flush()
def bench(fn):
    return do_bench_cudagraph(fn, rep=30) * 1e3
dev = "cuda"
say(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
torch.manual_seed(0)

K, N = 768, 2048
w13 = (torch.randn(2 * N, K, device=dev) * 0.02).bfloat16()
ref_c = torch.compile(sg.swiglu_reference, dynamic=True)
for m in [16, 64, 128, 256, 512, 1024, 4096, 32768]:
    x = torch.randn(m, K, device=dev).bfloat16()
    ref_c(x, w13); sg.swiglu(x, w13)
    say(f"swiglu M={m}: unfused {bench(lambda: ref_c(x, w13)):.1f} us, fused {sg.tile_config(m)} {bench(lambda: sg.swiglu(x, w13)):.1f} us")

acfgs = [(bn, w, st) for bn in (32, 64, 128) for w in (1, 2, 4) for st in (1, 2, 3)]
shapes = [("NAR-2048", 4096, 8, 128, 12, True), ("NAR-2048-late", 4096, 16, 220, 12, True), ("NAR-2048-early", 4096, 3, 20, 12, True),
          ("NAR-8", 16, 8, 128, 12, True), ("AR-2048", 4096, 1, 128, 12, True), ("AR-2048-late", 4096, 1, 250, 12, True),
          ("PAR-2048", 4096, 4, 128, 12, True), ("AR-8", 16, 1, 128, 12, True), ("VAR-256", 512, 256, 424, 16, False),
          ("VAR-256-mid", 512, 64, 100, 16, False), ("multi-100", 512, 100, 150, 12, True)]
for name, rows_b, n, start, H, rope in shapes:
    D, S = 64, max(257, start + n)
    q, k, v = torch.randn(rows_b * n, 3, H, D, device=dev).bfloat16().unbind(1)
    kc = torch.randn(rows_b, H, S, D, device=dev).bfloat16()
    vc = torch.randn_like(kc)
    freqs = torch.randn(n, D // 2, 2, device=dev) if rope else None
    nbytes = rows_b * H * start * D * 2 * 2
    res = []
    for bn, w, st in acfgs:
        try:
            t = bench(lambda: fd.triton_decode_attention(q, k, v, kc, vc, start, n, freqs, block_n=bn, num_warps=w, num_stages=st))
        except Exception:
            t = float("inf")
        res.append((t, (bn, w, st)))
    res.sort()
    t_def = bench(lambda: fd.triton_decode_attention(q, k, v, kc, vc, start, n, freqs))
    say(f"attn {name} rope={rope}: default {t_def:.1f} us ({nbytes / t_def / 1e3:.0f} GB/s); best "
        + "; ".join(f"{c} {t:.1f}us {nbytes / t / 1e3:.0f}GB/s" for t, c in res[:5]))
    say("   all: " + " ".join(f"{c[0]}/{c[1]}/{c[2]}:{t:.0f}" for t, c in sorted(res, key=lambda r: r[1])))
