"""GroupNorm microbench (GPU): the decoders' GroupNorm shapes at chunk 64, bf16 channels_last.
Old op (e00c395's moments kernel, per-tile reductions) vs new op (elementwise sums) under moment
plans, vs Inductor's compiled GroupNorm (+SiLU) and eager. Writes gn_bench.txt and best_plan.json."""
import json, os, sys, itertools
import torch, torch.nn.functional as F
import triton
from triton.testing import do_bench
sys.path.insert(0, "scratch")
import gn_old  # registers nar_bench_old::group_norm_nhwc
from nar_bench.config import load_config
from nar_bench.tokenizers import build_tokenizer
from nar_bench.nn import group_norm as g
from nar_bench.metrics.efficiency import randomize_weights

out_dir = sys.argv[1]
log = open(os.path.join(out_dir, "gn_bench.txt"), "a")
def say(*a):
    s = " ".join(str(x) for x in a); print(s, flush=True); log.write(s + "\n"); log.flush()

say(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
shapes = {}
for name, over in [("vq16", ["tokenizer.name=vq", "tokenizer.options.preset=vq_ds16"]),
                   ("var_vae", ["model.paradigm=var", "tokenizer.name=msvq", "tokenizer.options.preset=vae_ch160v4096z32"])]:
    torch.manual_seed(0)
    tok = build_tokenizer(load_config(None, [*over, "data.image_size=256", "data.grid_size=16"]))
    randomize_weights(tok)
    tok = tok.cuda().eval().to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    hooks = [m.register_forward_pre_hook(lambda m, a, name=name: shapes.setdefault(
        (tuple(a[0].shape), m.num_groups, m.silu), []).append(name)) for m in tok.modules() if isinstance(m, g.GroupNorm)]
    codes = torch.randint(tok.code_space.vocab_size, (64, tok.code_space.num_tokens), device="cuda")
    with torch.inference_mode():
        tok.decode(codes)
    for h in hooks: h.remove()
    del tok
torch.cuda.empty_cache()
say("shapes:", len(shapes))

default_plan = g.moments_plan
plans = {"default": None}
for per_sm, tile, warps in itertools.product((1024, 4096), (4096,), (4, 8)):
    def plan(b, hw, c, per_sm=per_sm, tile=tile, warps=warps):
        block_hw = max(1, tile // triton.next_power_of_2(c))
        runs = max(1, min(triton.cdiv(hw, block_hw), triton.cdiv(per_sm, b)))
        rows = triton.cdiv(triton.cdiv(hw, runs), block_hw) * block_hw
        return block_hw, rows, triton.cdiv(hw, rows), warps
    plans[f"p{per_sm}_t{tile}_w{warps}"] = plan

totals = {}
for (shape, groups, silu), users in sorted(shapes.items(), key=lambda kv: -torch.Size(kv[0][0]).numel()):
    torch.manual_seed(0)
    c = shape[1]
    x = (torch.randn(shape, device="cuda") + torch.randn(1, c, 1, 1, device="cuda") * 4).bfloat16() \
        .contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(c, device="cuda").bfloat16(), torch.randn(c, device="cuda").bfloat16()
    ref = F.group_norm(x.float(), groups, w.float(), b.float(), 1e-6)
    ref = F.silu(ref) if silu else ref
    def eager():
        y = F.group_norm(x, groups, w, b, 1e-6)
        return F.silu(y) if silu else y
    comp = torch.compile(eager, dynamic=False)
    row = {}
    big = x.numel() >= 64 * 128 * 256 * 256  # Inductor compiles per shape: only the 256 px ones
    with torch.inference_mode():
        if big:
            row["eager"] = do_bench(eager)
            comp(); row["inductor"] = do_bench(comp)
        row["old_op"] = do_bench(lambda: torch.ops.nar_bench_old.group_norm_nhwc(x, w, b, groups, 1e-6, silu))
        for pname, plan in plans.items():
            g.moments_plan = plan or default_plan
            y = torch.ops.nar_bench.group_norm_nhwc(x, w, b, groups, 1e-6, silu)
            err = ((y.float() - ref).abs() / (ref.abs() * 2**-8 + 1e-2)).max().item()
            row[pname] = do_bench(lambda: torch.ops.nar_bench.group_norm_nhwc(x, w, b, groups, 1e-6, silu))
            if err > 1.0: row[pname + "_ERR"] = err
        g.moments_plan = default_plan
    gb = 3 * x.numel() * 2 / 1e9
    say(f"{shape} g{groups} silu={silu} x{len(users)} {sorted(set(users))} floor-bytes {gb:.2f} GB: " +
        " ".join(f"{k}={v:.3f}ms" if not k.endswith("_ERR") else f"{k}={v:.2f}" for k, v in row.items()))
    for k, v in row.items():
        if not k.endswith("_ERR") and k not in ("eager", "inductor"):
            totals[k] = totals.get(k, 0.0) + v * len(users)
say("sum over shapes (ms):", " ".join(f"{k}={v:.2f}" for k, v in sorted(totals.items(), key=lambda kv: kv[1])))
best = min((k for k in totals if k in plans), key=totals.get)
json.dump({"best": best}, open(os.path.join(out_dir, "best_plan.json"), "w"))
say("best plan:", best)
