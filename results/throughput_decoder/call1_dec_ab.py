"""Decoder A/B (GPU): VQ-16 FastDecoder with / without the sub-pixel upsample fold; VAR's VAE eager
with / without it; profile by kernel kind of the folded VQ-16 decode. Writes to argv[1]."""
import os, sys, time, statistics
import torch
from nar_bench.config import load_config
from nar_bench.tokenizers import build_tokenizer
from nar_bench.nn import conv_blocks
from nar_bench.nn.fast_vae_decode import FastDecoder
from nar_bench.metrics.efficiency import randomize_weights, time_by_kind, inference_decoder

out = open(os.path.join(sys.argv[1], "dec_ab.txt"), "a")
def say(*a):
    s = " ".join(str(x) for x in a); print(s, flush=True); out.write(s + "\n"); out.flush()

say(torch.cuda.get_device_name(), torch.__version__)
ORIG_FOLD = conv_blocks.Upsample2x.fold_phases

def build(name):
    torch.manual_seed(0)
    over = ["tokenizer.name=vq", "tokenizer.options.preset=vq_ds16"] if name == "vq" else \
        ["model.paradigm=var", "tokenizer.name=msvq", "tokenizer.options.preset=vae_ch160v4096z32"]
    cfg = load_config(None, [*over, "data.image_size=256", "data.grid_size=16"])
    tok = build_tokenizer(cfg)
    randomize_weights(tok)
    return tok.cuda().eval()

def timeit(fn, reps=3):
    fn(); torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); e.synchronize(); ts.append(s.elapsed_time(e) / 1e3)
    return statistics.median(ts)

def run(name, fold, compile, batch, chunk=64, profile=False):
    conv_blocks.Upsample2x.fold_phases = ORIG_FOLD if fold else (lambda self: None)
    tok = build(name)
    L = tok.code_space.num_tokens
    codes = torch.randint(tok.code_space.vocab_size, (batch, L), device="cuda")
    t0 = time.perf_counter()
    if compile or fold:
        dec = FastDecoder(tok, torch.bfloat16, chunk=chunk, compile=compile)
    else:
        dec = inference_decoder(tok, "bf16", False)
    with torch.inference_mode():
        f = lambda: dec(codes)
        f(); torch.cuda.synchronize()
        setup = time.perf_counter() - t0
        t = timeit(f)
        say(f"{name} fold={fold} compile={compile} batch={batch} chunk={chunk}: {batch / t:.0f} img/s "
            f"({t * 1e3:.1f} ms), setup {setup:.1f} s, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        if profile:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                f(); torch.cuda.synchronize()
            ev = prof.key_averages()
            say(time_by_kind(ev, True)); say(ev.table(sort_by="cuda_time_total", row_limit=25))
    del dec, tok, codes
    torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()

run("vq", False, True, 256)
run("vq", True, True, 256, profile=True)
run("vq", True, True, 256, chunk=128)
run("vq", False, True, 256, profile=True)
run("msvq", False, False, 256)
run("msvq", True, False, 256, profile=True)
