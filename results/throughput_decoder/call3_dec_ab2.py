"""Decoder A/B (GPU), one variant per process: argv = out_dir name(vq|var) compile(0/1) norm(inductor|old|new) plan batch.
norm: inductor = the library's choice for compile=1 (no Triton norm), old = e00c395's op, new = this tree's op.
plan: default, or 'best' (read from out_dir/best_plan.json, names a gn_bench plan)."""
import json, os, sys, time, statistics
import torch, triton
sys.path.insert(0, "scratch")
import gn_old
from nar_bench.config import load_config
from nar_bench.tokenizers import build_tokenizer
from nar_bench.nn import group_norm as g
from nar_bench.nn.fast_vae_decode import FastDecoder
from nar_bench.metrics.efficiency import randomize_weights, time_by_kind

out_dir, name, compile, norm, plan_name, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6])
out = open(os.path.join(out_dir, "dec_ab2.txt"), "a")
def say(*a):
    s = " ".join(str(x) for x in a); print(s, flush=True); out.write(s + "\n"); out.flush()
if plan_name == "best":
    plan_name = json.load(open(os.path.join(out_dir, "best_plan.json")))["best"]
if plan_name != "default":
    per_sm, tile, warps = (int(p[1:]) for p in plan_name.split("_"))
    def plan(b, hw, c):
        block_hw = max(1, tile // triton.next_power_of_2(c))
        runs = max(1, min(triton.cdiv(hw, block_hw), triton.cdiv(per_sm, b)))
        rows = triton.cdiv(triton.cdiv(hw, runs), block_hw) * block_hw
        return block_hw, rows, triton.cdiv(hw, rows), warps
    g.moments_plan = plan
if norm == "old":
    g.GroupNorm.forward = gn_old.GroupNorm.forward
torch.manual_seed(0)
over = ["tokenizer.name=vq", "tokenizer.options.preset=vq_ds16"] if name == "vq" else \
    ["model.paradigm=var", "tokenizer.name=msvq", "tokenizer.options.preset=vae_ch160v4096z32"]
tok = build_tokenizer(load_config(None, [*over, "data.image_size=256", "data.grid_size=16"]))
randomize_weights(tok)
tok = tok.cuda().eval()
codes = torch.randint(tok.code_space.vocab_size, (batch, tok.code_space.num_tokens), device="cuda")
t0 = time.perf_counter()
dec = FastDecoder(tok, torch.bfloat16, chunk=64, compile=bool(compile))
if norm != "inductor":
    for m in tok.modules():
        if isinstance(m, g.GroupNorm):
            m.fused = True
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
    say(f"{torch.cuda.get_device_name()} {name} compile={compile} norm={norm} plan={plan_name} batch={batch}: "
        f"{batch / t:.0f} img/s ({t * 1e3:.1f} ms; runs {' '.join(f'{x * 1e3:.1f}' for x in ts)}), setup {setup:.1f} s, "
        f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        f(); torch.cuda.synchronize()
    ev = prof.key_averages()
    say(time_by_kind(ev, True)); say(ev.table(sort_by="cuda_time_total", row_limit=8))
