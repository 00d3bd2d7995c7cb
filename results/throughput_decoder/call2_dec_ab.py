"""Decoder A/B (GPU), one variant per process: argv = out_dir name fold(0/1) norm(0/1) compile(0/1) batch [profile]."""
import os, sys, time, statistics
import torch
from nar_bench.config import load_config
from nar_bench.tokenizers import build_tokenizer
from nar_bench.nn import conv_blocks, group_norm
from nar_bench.nn.fast_vae_decode import FastDecoder
from nar_bench.metrics.efficiency import randomize_weights, time_by_kind

out_dir, name, fold, norm, compile, batch = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
profile = len(sys.argv) > 7
out = open(os.path.join(out_dir, "dec_ab.txt"), "a")
def say(*a):
    s = " ".join(str(x) for x in a); print(s, flush=True); out.write(s + "\n"); out.flush()

if not fold:
    conv_blocks.Upsample2x.fold_phases = lambda self: None
if not norm:
    group_norm.runs_fused = lambda x: False
torch.manual_seed(0)
over = ["tokenizer.name=vq", "tokenizer.options.preset=vq_ds16"] if name == "vq" else \
    ["model.paradigm=var", "tokenizer.name=msvq", "tokenizer.options.preset=vae_ch160v4096z32"]
tok = build_tokenizer(load_config(None, [*over, "data.image_size=256", "data.grid_size=16"]))
randomize_weights(tok)
tok = tok.cuda().eval()
codes = torch.randint(tok.code_space.vocab_size, (batch, tok.code_space.num_tokens), device="cuda")
t0 = time.perf_counter()
dec = FastDecoder(tok, torch.bfloat16, chunk=64, compile=bool(compile))
with torch.inference_mode():
    f = lambda: dec(codes)
    f(); torch.cuda.synchronize()
    setup = time.perf_counter() - t0
    f(); torch.cuda.synchronize()
    ts = []
    for _ in range(3):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); f(); e.record(); e.synchronize(); ts.append(s.elapsed_time(e) / 1e3)
    t = statistics.median(ts)
    say(f"{torch.cuda.get_device_name()} {name} fold={fold} norm={norm} compile={compile} batch={batch}: "
        f"{batch / t:.0f} img/s ({t * 1e3:.1f} ms), setup {setup:.1f} s, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    if profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            f(); torch.cuda.synchronize()
        ev = prof.key_averages()
        say(time_by_kind(ev, True)); say(ev.table(sort_by="cuda_time_total", row_limit=25))
