"""One-call GPU measurement of the decode engine II work (issue 16): eager vs fused decode,
greedy-token agreement and logit tolerance, decode-attention and top-k microbenchmarks, img/s of
NAR-B / AR-B / PAR-B-4x / VAR-d16 at batch 8 and a large batch, the VQ-16 and VAR VAE decoders,
NAR-B end to end, bf16 training-step throughput (dense vs flex masks) and a top-kernel profile.

    python tools/engine_bench.py --out $OUT [--tiny] [--budget 330]

Every section appends JSON lines to OUT/results.jsonl as it finishes and is skipped once the
wall-clock budget is spent, so a cut-off run still returns what it measured. ``--tiny`` runs the
same code on CPU-sized models (the pre-flight check).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch

from nar_bench.bench import bench_points, bench_tokenizer
from nar_bench.build import build_paradigm
from nar_bench.config import load_config
from nar_bench.metrics.cost_model import generation_cost, measure_ceilings
from nar_bench.metrics.efficiency import (
    inference_decoder,
    measure_generation,
    randomize_weights,
    release_decode_state,
    reset_device_memory,
    timed,
)
from nar_bench.metrics.training_throughput import measure_training_step
from nar_bench.nn.fast_vae_decode import FastDecoder
from nar_bench.nn.fused_decode import decode_attention, disable_fused_decode
from nar_bench.nn.sampling import SamplingConfig

T0 = time.perf_counter()


class Log:
    def __init__(self, out: Path, budget: float):
        self.path, self.budget = out / "results.jsonl", budget
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.perf_counter() - T0)

    def write(self, section: str, **row) -> None:
        row = {"section": section, "t": round(time.perf_counter() - T0, 1), **row}
        with self.path.open("a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        print(json.dumps(row, default=str), flush=True)

    def section(self, name: str, need: float):
        log = self

        class Section:
            def __enter__(self):
                self.skip = log.left() < need
                if self.skip:
                    log.write(name, skipped=f"budget: {log.left():.0f}s left < {need:.0f}s")
                return self

            def __exit__(self, kind, exc, tb):
                if exc is not None:
                    log.write(name, error=f"{kind.__name__}: {exc}", trace=traceback.format_exc()[-3000:])
                    return True
                return False

        return Section()


def point_configs(tiny: bool):
    overrides = []
    if tiny:
        overrides = ["bench.device=cpu", "bench.dtype=fp32", "data.grid_size=8", "data.image_size=32",
                     "bench.vocab_size=64", "bench.num_classes=10", "eval.sampling.top_k=16",
                     "bench.points=[{name: NAR-B, paradigm: nar, size: tiny}, {name: AR-B, paradigm: ar, size: tiny},"
                     " {name: PAR-B-4x, paradigm: par, size: tiny, options: {regions: 4}}]"]
    cfg = load_config("experiments/throughput_sweep.yaml", overrides)
    return dict(bench_points(cfg))


def build(point_cfg, device):
    torch.manual_seed(0)
    tokenizer = bench_tokenizer(point_cfg)
    paradigm = build_paradigm(point_cfg, tokenizer, point_cfg.bench.num_classes)
    randomize_weights(paradigm)
    if isinstance(tokenizer, torch.nn.Module):
        tokenizer.to(device).eval()
    return paradigm.to(device), tokenizer, SamplingConfig(**point_cfg.eval.sampling)


def greedy_trace(model, labels, sampling, forced=None):
    """Greedy tokens, every step's logits and tokens. With ``forced`` (a previous trace's per-step
    tokens) those tokens are fed instead of the sampled ones (teacher forcing), so each step's
    logits are compared on the same inputs."""
    import nar_bench.paradigms.base as engine

    seen, steps, original_logits, original_sample = [], [], model.step_logits, engine.sample_step

    def record(step, fed):
        out = original_logits(step, fed)
        seen.append(out.float().clone())
        return out

    def sample(logits, cfg, step, generator=None, scale=None):
        new = original_sample(logits, cfg, step, generator, scale)
        steps.append(new.clone())
        return forced[step] if forced is not None else new

    model.step_logits, engine.sample_step = record, sample
    try:
        tokens = model.generate(labels, SamplingConfig(cfg_scale=sampling.cfg_scale, temperature=0.0))
    finally:
        del model.step_logits
        engine.sample_step = original_sample
    return tokens, seen, steps


def generation(order, points, skip, log, device, dtype, small, big, repeats, ceilings, cuda, state) -> None:
    """Eager engine vs fused decode for each model of ``order``: cost, greedy check, img/s."""
    for label in order:
        if label not in points or label in skip:
            continue
        with log.section(f"gen:{label}", 25) as s:
            if s.skip:
                continue
            reset_device_memory(device)
            paradigm, tokenizer, sampling = build(points[label], device)
            protocol = {"dtype": dtype, "warmup": 1, "repeats": repeats, "device": device, "cuda_graph": cuda}
            paradigm.to(dtype=torch.bfloat16 if cuda else torch.float32)
            cost = None
            if not state.get("no_cost"):
                cost = generation_cost(paradigm, sampling, device=device)
                log.write("cost", model=label, **asdict(cost))
            fusable = hasattr(paradigm, "compile_decoding")
            if fusable and label == "NAR-B":  # greedy agreement and logit tolerance, eager vs fused
                labels = torch.arange(small, device=device) % 1000
                ref_tokens, ref_logits, ref_steps = greedy_trace(paradigm, labels, sampling)
                t = time.perf_counter()
                paradigm.compile_decoding()
                tokens, _, _ = greedy_trace(paradigm, labels, sampling)
                first = time.perf_counter() - t
                _, logits, steps = greedy_trace(paradigm, labels, sampling, forced=ref_steps)  # same inputs
                diffs = [((a - b).abs().max().item(), (a - b).norm().item() / b.norm().item())
                         for a, b in zip(logits, ref_logits, strict=True)]
                step_agree = [(a == b).float().mean().item() for a, b in zip(steps, ref_steps, strict=True)]
                log.write("fused_vs_eager", model=label, free_running_token_agreement=(tokens == ref_tokens)
                          .float().mean().item(), teacher_forced_token_agreement=sum(step_agree) / len(step_agree),
                          steps_compared=len(diffs), max_abs_logit_diff=max(d[0] for d in diffs),
                          max_rel_logit_err=max(d[1] for d in diffs), first_fused_generate_s=first,
                          logit_abs_max=max(b.abs().max().item() for b in ref_logits))
                disable_fused_decode(paradigm)
            for bs in (small, big.get(label, 8)):
                if (label == "NAR-B" and not state.get("fused_only")) or not fusable:  # eager-kernel baseline
                    if log.left() < 20:
                        break
                    disable_fused_decode(paradigm) if fusable else None
                    r = measure_generation(paradigm, bs, sampling, compile=False, cost=cost, ceilings=ceilings,
                                           **protocol)
                    log.write("gen", model=label, engine="eager", **asdict(r))
                    release_decode_state(paradigm)
                if fusable:
                    if log.left() < 20:
                        break
                    r = measure_generation(paradigm, bs, sampling, compile=True, cost=cost, ceilings=ceilings,
                                           **protocol)
                    log.write("gen", model=label, engine="fused", **asdict(r))
                    release_decode_state(paradigm)
            if label == "NAR-B":
                state["nar"] = (paradigm, sampling, cost)
            else:
                del paradigm



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="engine_bench_out")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--budget", type=float, default=330)
    ap.add_argument("--skip", default="", help="comma-separated sections to skip")
    ap.add_argument("--decoders", default="VQ-16,VAR-VAE")
    ap.add_argument("--no-cost", action="store_true", help="skip the FLOP/byte counting runs")
    ap.add_argument("--fused-only", action="store_true", help="no eager-engine baseline for NAR-B")
    ap.add_argument("--models", default="NAR-B,AR-B,PAR-B-4x", help="models of the first generation pass")
    ap.add_argument("--train-flex", default="AR-B,NAR-B,PAR-B-4x", help="models also trained with flex masks")
    args = ap.parse_args()
    log = Log(Path(args.out), args.budget)
    skip = set(filter(None, args.skip.split(",")))
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    dtype = "bf16" if cuda else "fp32"
    big = {"NAR-B": 2048, "AR-B": 2048, "PAR-B-4x": 1024, "VAR-d16": 256} if cuda else \
        {"NAR-B": 4, "AR-B": 4, "PAR-B-4x": 4}
    small = 8 if cuda else 2
    repeats = 3 if cuda else 1
    log.write("env", torch=torch.__version__, device=torch.cuda.get_device_name() if cuda else "cpu",
              commit=Path("COMMIT").read_text().strip() if Path("COMMIT").is_file() else None)
    ceilings = None
    if cuda:
        with log.section("ceilings", 10) as s:
            if not s.skip:
                ceilings = measure_ceilings("cuda")
                log.write("ceilings", **asdict(ceilings))

    # --- microbenchmarks --------------------------------------------------------------------------
    if cuda and "micro" not in skip:
        with log.section("decode_attention", 20) as s:
            if not s.skip:
                for b, n, start in ((16, 1, 128), (16, 16, 120), (4096, 8, 128), (4096, 16, 200), (4096, 1, 250),
                                    (2048, 4, 200)):
                    h, d, seq = 12, 64, 257
                    qkv = torch.randn(b * n, 3, h, d, device=device, dtype=torch.bfloat16)
                    q, k, v = qkv.unbind(1)
                    kc, vc = (torch.randn(b, h, seq, d, device=device, dtype=torch.bfloat16) for _ in range(2))
                    ref = decode_attention(q, k, v, kc, vc, start, n, backend="sdpa")
                    out = decode_attention(q, k, v, kc, vc, start, n, backend="triton")
                    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                    row = {"b": b, "n": n, "start": start, "rel_err": err}
                    nbytes = 2 * b * h * (start + n) * d * 2
                    for backend in ("sdpa", "triton"):
                        fn = functools.partial(decode_attention, q, k, v, kc, vc, start, n, backend=backend)
                        fn()
                        secs = sorted(timed(fn, device) for _ in range(7))[3]
                        row[f"{backend}_us"] = secs * 1e6
                        row[f"{backend}_gbps"] = nbytes / secs / 1e9
                    log.write("decode_attention", **row)
        with log.section("topk", 15) as s:
            if not s.skip:
                x = torch.randn(2048 * 8, 16384, device=device, dtype=torch.bfloat16)
                for name, fn in (("topk_sorted_bf16", lambda: x.topk(2000, -1)),
                                 ("topk_unsorted_bf16", lambda: x.topk(2000, -1, sorted=False)),
                                 ("topk_sorted_fp32", lambda: x.float().topk(2000, -1)),
                                 ("lerp_bf16", lambda: torch.lerp(x, x, 2.0))):
                    fn()
                    log.write("topk", op=name, rows=x.shape[0], ms=sorted(timed(fn, device) for _ in range(5))[2] * 1e3)
                del x

    # --- generation: eager engine vs fused, per model --------------------------------------------
    points = point_configs(args.tiny)
    state = {"nar": None, "no_cost": args.no_cost, "fused_only": args.fused_only}
    generation(args.models.split(","), points, skip, log, device, dtype, small, big, repeats, ceilings, cuda,
               state)
    nar_keep = state["nar"]
    # --- profile of what remains (fused NAR-B at the large batch, no graph) ----------------------
    if nar_keep is not None and "profile" not in skip:
        with log.section("profile", 25) as s:
            if not s.skip:
                paradigm, sampling, _ = nar_keep
                paradigm.compile_decoding()
                bs = 1024 if cuda else 2
                labels = torch.arange(bs, device=device) % 1000
                paradigm.generate(labels, sampling)
                acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
                with torch.profiler.profile(activities=acts) as prof:
                    paradigm.generate(labels, sampling)
                    if cuda:
                        torch.cuda.synchronize()
                table = prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total",
                                                  row_limit=25, max_name_column_width=60)
                (Path(args.out) / "profile_nar_b_fused.txt").write_text(table)
                print(table, flush=True)
                release_decode_state(paradigm)

    # --- training step throughput ----------------------------------------------------------------
    if "train" not in skip:
        for label in ("AR-B", "NAR-B", "PAR-B-4x"):
            if label not in points:
                continue
            with log.section(f"train:{label}", 30) as s:
                if s.skip:
                    continue
                reset_device_memory(device)
                paradigm, _, _ = build(points[label], device)
                flex = cuda and label in args.train_flex.split(",")
                for attention in (("dense", "flex") if flex else ("dense",)):
                    if log.left() < 25:
                        break
                    r = measure_training_step(paradigm, 64 if cuda else 2, attention=attention, warmup=2,
                                              repeats=3, device=device)
                    log.write("train", model=label, **asdict(r))
                del paradigm
    generation(["VAR-d16"], points, skip, log, device, dtype, small, big, repeats, ceilings, cuda, state)

    # --- decoders and end to end -----------------------------------------------------------------
    if "decoders" not in skip:
        for name, overrides in (("VQ-16", ["tokenizer.name=vq", "tokenizer.options.preset=vq_ds16"]),
                                ("VAR-VAE", ["tokenizer.name=msvq", "tokenizer.options.preset=vae_ch160v4096z32",
                                             "model.paradigm=var", "model.options.scales=[1,2,3,4,5,6,8,10,13,16]"])):
            if args.tiny:
                overrides = [o for o in overrides if "preset" not in o and "scales" not in o]
                overrides += ["data.image_size=32", "data.grid_size=8"] + (
                    ["model.options.scales=[1,2,4,8]"] if name == "VAR-VAE" else [])
            with log.section(f"decoder:{name}", 40) as s:
                if s.skip or name not in args.decoders.split(","):
                    continue
                reset_device_memory(device)
                torch.manual_seed(0)
                cfg = load_config(None, overrides + ([] if args.tiny else ["data.image_size=256", "data.grid_size=16"]))
                from nar_bench.build import build_tokenizer

                tok = build_tokenizer(cfg).to(device).eval()
                n_codes = tok.encode(torch.zeros(1, 3, cfg.data.image_size, cfg.data.image_size,
                                                 device=device)).shape[1]
                codes = torch.randint(tok.vocab_size, (256 if cuda else 4, n_codes), device=device)
                with torch.no_grad():
                    ref32 = tok.decode(codes[:8]).float()
                eager = inference_decoder(tok, dtype)
                with torch.no_grad():
                    ref_bf16 = eager(codes[:8]).float()
                fast = FastDecoder(tok, torch.bfloat16 if cuda else torch.float32, chunk=64 if cuda else 2,
                                   compile=True)
                t = time.perf_counter()
                out = fast(codes[:8]).float()
                compile_s = time.perf_counter() - t
                log.write("decoder_check", decoder=name, compile_s=compile_s,
                          max_abs_vs_eager_bf16=(out - ref_bf16).abs().max().item(),
                          mean_abs_vs_eager_bf16=(out - ref_bf16).abs().mean().item(),
                          max_abs_vs_fp32=(out - ref32).abs().max().item(),
                          mean_abs_vs_fp32=(out - ref32).abs().mean().item())
                for bs in ((64, 256) if cuda else (4,)):
                    for engine, fn in (("eager_bf16", eager), ("fast", fast)):
                        with torch.no_grad():
                            fn(codes[:bs])
                            secs = sorted(timed(functools.partial(fn, codes[:bs]), device) for _ in range(3))[1]
                        log.write("decoder", decoder=name, engine=engine, batch=bs, img_s=bs / secs,
                                  peak_mem_gb=torch.cuda.max_memory_allocated() / 2**30 if cuda else None)
                if name == "VQ-16" and nar_keep is not None and log.left() > 30:
                    paradigm, sampling, cost = nar_keep
                    bs = 1024 if cuda else 2
                    r = measure_generation(paradigm, bs, sampling, dtype=dtype, warmup=1, repeats=repeats,
                                           device=device, cuda_graph=cuda, compile=True, decode_fn=fast)
                    log.write("e2e", model="NAR-B+VQ-16", engine="fused+fast decoder", **asdict(r))
                    release_decode_state(paradigm)
                del tok, fast, eager

    log.write("done", elapsed_s=time.perf_counter() - T0)


if __name__ == "__main__":
    main()
