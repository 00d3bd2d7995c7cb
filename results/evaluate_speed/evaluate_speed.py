"""How fast `nar-bench evaluate` runs, per phase, on one GPU: the real evaluate_checkpoint code path
(graph engine: fused compiled step in one CUDA graph per batch shape + the fast VQ-16 decoder; ADM
metrics) on random weights, against a reference batch of random images scored with random
Inception weights. THE FID VALUES ARE MEANINGLESS; only the timings count. Next to NAR-B's row,
the bench protocol's NAR-B (+ VQ-16 decode) img/s at the same batch, for comparison.

    python results/evaluate_speed/evaluate_speed.py OUT [--num-samples 50000] [--models NAR-B,AR-B]
    python results/evaluate_speed/evaluate_speed.py OUT --smoke     # tiny models on a CPU, seconds

Each model's row is appended to OUT/evaluate_speed.csv (and .jsonl) as soon as it is measured, so a
command stopped by a time limit keeps every finished row; its eval.json is copied to OUT too. The
big files (checkpoints, the reference batch, samples: 10 GB at N=50,000) stay in --work, and each
model's samples are deleted once scored. run.sh next to this file is the GPU call.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

START = time.perf_counter()
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import nar_bench  # noqa: E402, F401  (first: torchvision next to a CPU torch)
from nar_bench.config import load_config  # noqa: E402
from nar_bench.evaluation import evaluate_checkpoint  # noqa: E402
from nar_bench.evaluation.protocol import speed_line  # noqa: E402
from nar_bench.lit.module import GeneratorModule  # noqa: E402
from nar_bench.metrics.adm import build_reference  # noqa: E402
from nar_bench.metrics.cache import CACHE_ENV  # noqa: E402
from nar_bench.metrics.efficiency import inference_decoder, measure_generation, randomize_weights  # noqa: E402
from nar_bench.nn.sampling import SamplingConfig  # noqa: E402
from nar_bench.tracking.provenance import device_name, git_commit  # noqa: E402

CLASSES, SMOKE_CLASSES = 1000, 16
# name -> (paradigm, size, extra overrides); every model on the VQ-16 code space except VAR (its own VAE)
MODELS = {
    "NAR-B": ("nar", "B", []),
    "AR-B": ("ar", "B", []),
    "PAR-B-4x": ("par", "B", ["model.options.regions=4"]),
    "MaskGIT-B-8": ("maskgit", "B", ["model.options.steps=8"]),
    "VAR-d16": ("var", "d16", ["tokenizer.name=msvq", "tokenizer.options.preset=vae_ch160v4096z32",
                               "eval.sampling.top_k=900", "eval.sampling.top_p=0.96"]),
}
GPU = ["data.image_size=256", "data.grid_size=16", "tokenizer.name=vq", "tokenizer.options.preset=vq_ds16",
       "trainer.accelerator=gpu", "trainer.precision=bf16-mixed", "eval.engine=graph"]
# tiny models on 16 px / 4 x 4 codes; VAR keeps its own tiny msvq (the paradigm's test kit)
SMOKE = ["data.image_size=16", "data.grid_size=4", "tokenizer.name=vq", "tokenizer.options.preset=synthetic",
         "trainer.accelerator=cpu", "trainer.precision=32-true", "eval.engine=eager", "model.size=tiny"]
SMOKE_VAR = ["tokenizer.name=msvq", "tokenizer.options.ch=8", "tokenizer.options.ch_mult=[1,2]",
             "tokenizer.options.norm_groups=4", "tokenizer.options.vocab_size=32", "tokenizer.options.z_channels=8",
             "tokenizer.options.scales=[1,2,4,8]", "data.grid_size=8"]


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f} s] {message}", flush=True)


def random_inception_weights(path: Path) -> Path:
    """torch-fidelity's InceptionV3 with random (He) weights, as tests/conftest.py makes them: the
    official file is not on the device, and the timing does not depend on the weights."""
    from nar_bench.metrics.fidelity import torch_fidelity

    inception = torch_fidelity.FeatureExtractorInceptionV3
    torch.manual_seed(0)
    load, load_state = torch.load, inception.load_state_dict
    torch.load, inception.load_state_dict = (lambda *a, **k: None), (lambda self, state_dict: None)
    try:
        model = inception("inception-v3-compat", ["2048"], feature_extractor_weights_path="not read")
    finally:
        torch.load, inception.load_state_dict = load, load_state
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.nn.init.normal_(model.fc.weight, std=2048**-0.5)
    torch.save(model.state_dict(), path)
    return path


def random_reference(path: Path, count: int, size: int, weights: Path, device: str) -> Path:
    """An ADM reference batch of ``count`` random ``size`` px images (smooth noise, so Inception's
    features vary), with its statistics and the cached pool features precision/recall reads."""
    gen = np.random.default_rng(0)

    def chunks():
        for start in range(0, count, 500):
            n = min(500, count - start)
            low = gen.integers(0, 256, (n, size // 8 or 1, size // 8 or 1, 3), dtype=np.uint8)
            yield np.repeat(np.repeat(low, size // low.shape[1], 1), size // low.shape[2], 2)

    return build_reference(chunks(), count, (size, size, 3), path, weights_path=weights, device=device)


def model_config(name: str, args: argparse.Namespace, work: Path, reference: Path, weights: Path):
    paradigm, size, extra = MODELS[name]
    base = SMOKE if args.smoke else GPU
    extra = [x for x in extra if not x.startswith("tokenizer.") or not args.smoke]
    if args.smoke and paradigm == "var":
        extra += SMOKE_VAR
    batch = args.var_batch_size if paradigm == "var" else args.batch_size
    return load_config(None, [
        *base, f"model.paradigm={paradigm}", *([] if args.smoke else [f"model.size={size}"]),
        "tokenizer.untrained=true", "trainer.devices=1", "eval.sampling.cfg_scale=2.0", "eval.sampling.top_k=2000",
        "eval.sampling.top_p=1.0", f"eval.batch_size={batch}", f"eval.shard_size={args.shard_size}",
        f"eval.decode_batch={args.decode_batch}", f"eval.reference={reference}",
        f"eval.extractor_options.weights_path={weights}", f"tracking.tracking_uri=sqlite:///{work}/mlruns.db",
        f"tracking.artifact_location={work}/mlartifacts", "tracking.experiment=evaluate-speed",
        f"output_dir={work}/runs", *extra])


def random_checkpoint(cfg, path: Path, classes: int) -> Path:
    """A nar-bench .ckpt of the model with random weights (std 0.02 matrices, as the bench) and the
    untrained tokenizer: what `nar-bench evaluate --ckpt` loads."""
    import lightning as L

    torch.manual_seed(0)
    module = GeneratorModule(cfg, classes, load_initial_weights=False)
    randomize_weights(module.paradigm)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": L.__version__}, path)
    return path


def append_row(out: Path, row: dict) -> None:
    with open(out / "evaluate_speed.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in (out / "evaluate_speed.jsonl").read_text().splitlines()]
    pd.DataFrame(rows).to_csv(out / "evaluate_speed.csv", index=False)


def evaluate_model(name: str, args: argparse.Namespace, out: Path, reference: Path, weights: Path) -> dict:
    cfg = model_config(name, args, args.work, reference, weights)
    start = time.perf_counter()
    ckpt = random_checkpoint(cfg, args.work / f"{name}.ckpt", args.classes)
    checkpoint_s = time.perf_counter() - start
    log(f"{name}: random checkpoint written ({checkpoint_s:.1f} s); evaluating {args.num_samples} samples")
    start = time.perf_counter()
    record = evaluate_checkpoint(cfg, ckpt, args.num_samples, name=name, num_classes=args.classes,
                                 command=" ".join(sys.argv))
    command_s = time.perf_counter() - start
    speed = record["speed"]
    other_s = command_s - speed["wall_s"]  # loading the checkpoint, hashing it, MLflow, the sample grid
    # within wall_s but in no phase: the Trainer's predict set-up and loop, bookkeeping between shards
    rest_s = speed["wall_s"] - sum(speed[k] for k in ("setup_s", "generate_s", "decode_s", "write_s", "score_s"))
    row = {"model": name, "num_samples": args.num_samples, "command_s": command_s, "load_and_record_s": other_s,
           "rest_s": rest_s,
           **{k: record["settings"][k] for k in ("engine", "dtype", "batch_size", "decode_batch", "device")},
           **speed, **{f"quality_{k}": v for k, v in record["metrics"].items()},
           "commit": git_commit(), "torch": torch.__version__}
    append_row(out, row)
    log(f"{name}: evaluate_checkpoint {command_s:.1f} s = load/record {other_s:.1f} s + setup {speed['setup_s']:.1f} "
        f"(compile {speed['compile_s']:.1f}) + generate {speed['generate_s']:.1f} + decode {speed['decode_s']:.1f} + "
        f"write {speed['write_s']:.1f} + score {speed['score_s']:.1f} + the rest {rest_s:.1f} s; the "
        f"samples' features took {args.num_samples / speed['feature_img_s']:.1f} s, extracted while the .npz was "
        "written (ADM scorer) or within score")
    log(f"{name}: {speed_line(speed)}")
    ckpt.unlink()
    shutil.copy(Path(record["samples"]).with_name("eval.json"), out / f"eval_{name}.json")
    Path(record["samples"]).unlink()
    return row


def bench_rows(args: argparse.Namespace, out: Path, reference: Path, weights: Path) -> None:
    """The bench protocol (bench.cuda_graph, bench.compile, bf16, random weights) on NAR-B at the
    evaluation's batch: tokens only, and tokens + VQ-16 decode (the bench's compiled decoder)."""
    cfg = model_config("NAR-B", args, args.work, reference, weights)
    torch.manual_seed(0)
    module = GeneratorModule(cfg, args.classes, load_initial_weights=False)
    randomize_weights(module.paradigm)
    cuda = not args.smoke
    device = "cuda" if cuda else "cpu"
    module.tokenizer.to(device).eval()
    for decode in (False, True)[: 1 if args.bench_tokens_only else 2]:
        decode_fn = inference_decoder(module.tokenizer, "bf16", compile=cuda) if decode else None
        result = measure_generation(module.paradigm, args.batch_size, SamplingConfig(**cfg.eval.sampling),
                                    dtype="bf16" if cuda else "fp32", warmup=1, repeats=3, decode_fn=decode_fn,
                                    device=device, cuda_graph=cuda, compile=cuda, size="B")
        row = {"model": "NAR-B+VQ16-decode (bench)" if decode else "NAR-B (bench)", **asdict(result)}
        row.pop("latency_all")
        append_row(out, row)
        log(f"{row['model']}: batch {result.batch_size}: {result.throughput_img_s:.1f} img/s, latency "
            f"{result.latency_s:.3f} s, setup {result.setup_s:.1f} s (compile {result.compile_s or 0:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="rows, logs and each model's eval.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/evaluate_speed_work"),
                        help="checkpoints, reference batch, samples, MLflow store (deleted first)")
    parser.add_argument("--num-samples", type=int, default=50_000)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--var-batch-size", type=int, default=250)  # VAR-d16's bench limit is 256-512
    parser.add_argument("--shard-size", type=int, default=1000)  # a multiple of both: no padded micro-batch
    parser.add_argument("--decode-batch", type=int, default=64)  # the bench decoder's chunk
    parser.add_argument("--reference-size", type=int, default=10_000)
    parser.add_argument("--no-bench", action="store_true", help="skip the bench protocol's NAR-B rows")
    parser.add_argument("--bench-tokens-only", action="store_true", help="skip the bench row with the VQ-16 decode")
    parser.add_argument("--smoke", action="store_true", help="tiny models on a CPU (N, reference, batch small)")
    args = parser.parse_args()
    args.classes = SMOKE_CLASSES if args.smoke else CLASSES
    if args.smoke:  # 2 samples per class, micro-batches of 12 (the last of each 16-sample shard padded)
        args.num_samples, args.reference_size, args.shard_size = 2 * SMOKE_CLASSES, 64, 16
        args.batch_size = args.var_batch_size = 12
        args.decode_batch = 8
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    out, args.work = args.out.resolve(), args.work.resolve()
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    os.environ[CACHE_ENV] = str(args.work / "cache")  # the reference's cached pool features
    device = "cpu" if args.smoke else "cuda"
    log(f"device {device_name(device)}, torch {torch.__version__}, commit {git_commit()}; N={args.num_samples}, "
        f"batch {args.batch_size} (VAR {args.var_batch_size}), shards of {args.shard_size}, decode batch "
        f"{args.decode_batch}, reference {args.reference_size} random images, random Inception weights: FID "
        "values are meaningless, only the timings count")
    weights = random_inception_weights(args.work / "inception-random.pth")
    size = 16 if args.smoke else 256
    start = time.perf_counter()
    reference = random_reference(args.work / "reference.npz", args.reference_size, size, weights, device)
    log(f"reference batch of {args.reference_size} images built in {time.perf_counter() - start:.1f} s")
    for name in models:
        evaluate_model(name, args, out, reference, weights)
        if name == "NAR-B" and not args.no_bench:
            bench_rows(args, out, reference, weights)
    log(f"whole command: {time.perf_counter() - START:.1f} s; rows in {out / 'evaluate_speed.csv'}")


if __name__ == "__main__":
    main()
