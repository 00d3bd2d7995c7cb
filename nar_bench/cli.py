"""`nar-bench` command line: thin verbs over the package.

    nar-bench train experiments/demo.yaml model.paradigm=nar trainer.max_steps=10
    nar-bench sample --ckpt results/runs/<run>/checkpoints/last.ckpt eval.sampling.cfg_scale=3
    nar-bench bench experiments/throughput_sweep.yaml bench.batch_sizes=[1,8,64]
    nar-bench sweep experiments/ablation_heads.yaml [--only ntp_raster,nar_dim_heads_mixed] trainer.max_steps=50
    nar-bench report experiments/ablation_heads.yaml --parent latest
    nar-bench train-tokenizer experiments/demo.yaml tokenizer.name=vq tokenizer.options.preset=synthetic
    nar-bench extract-codes experiments/demo.yaml results/codes/imagenet data.name=imagefolder data.root=...
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
from pathlib import Path

from nar_bench.errors import NarBenchError


def cmd_train(args: argparse.Namespace) -> None:
    from nar_bench.config import load_config
    from nar_bench.train import train

    summary = train(load_config(args.config, args.overrides))
    if summary:
        print(" ".join(f"{k}={v}" for k, v in summary.items()))


def cmd_sample(args: argparse.Namespace) -> None:
    import torch
    from omegaconf import OmegaConf

    from nar_bench.config import merge
    from nar_bench.images import save_samples
    from nar_bench.lit.module import GeneratorModule
    from nar_bench.nn.sampling import SamplingConfig

    if not Path(args.ckpt).is_file():
        raise NarBenchError(f"checkpoint '{args.ckpt}' not found; train first (nar-bench train ...) or fix the path")
    module = GeneratorModule.load_from_checkpoint(args.ckpt, map_location="cpu")
    if torch.cuda.is_available():
        module = module.cuda()
    cfg = merge(module.cfg, OmegaConf.from_dotlist(args.overrides), source="command-line overrides")
    images = module.sample_grid(cfg.seed, SamplingConfig(**cfg.eval.sampling))
    print(save_samples(images, args.out, nrow=module.grid_columns))


def cmd_bench(args: argparse.Namespace) -> None:
    from nar_bench.bench import run_throughput_sweep
    from nar_bench.config import load_config

    cfg = load_config(args.config, args.overrides)
    run_throughput_sweep(cfg, command=args.command_line)
    print(f"results in {cfg.bench.output_dir}")


def select_variants(cfg, only: str | None):
    """``cfg`` with just the sweep variants named in the comma-separated ``only``."""
    if not only:
        return cfg
    names = [name.strip() for name in only.split(",")]
    known = [variant.get("name") for variant in cfg.sweep.variants]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise NarBenchError(f"--only: no sweep variant named {', '.join(unknown)}; "
                            f"variants: {', '.join(map(str, known))}")
    cfg = copy.deepcopy(cfg)
    cfg.sweep.variants = [variant for variant in cfg.sweep.variants if variant.get("name") in names]
    return cfg


def cmd_sweep(args: argparse.Namespace) -> None:
    from lightning.pytorch.utilities import rank_zero_only

    from nar_bench.config import load_config
    from nar_bench.provenance import provenance
    from nar_bench.sweep import run_sweep
    from nar_bench.tracking.report import write_report
    from nar_bench.train_eval import TrainAndEvaluate

    cfg = select_variants(load_config(args.config, args.overrides), args.only)
    name = cfg.tracking.run_name or Path(args.config).stem
    table = run_sweep(cfg, TrainAndEvaluate(cfg), name)
    if rank_zero_only.rank != 0:
        return
    grid = [key.split(".")[-1] for key in cfg.sweep.grid]
    info = provenance(args.command_line, experiment=cfg.tracking.experiment)
    paths = write_report(table, grid, args.out or Path("results") / Path(args.config).stem, info)
    print("\n".join(str(path) for path in paths.values()))


def cmd_report(args: argparse.Namespace) -> None:
    from nar_bench.config import load_config
    from nar_bench.provenance import provenance
    from nar_bench.tracking.report import fetch_runs, runs_provenance, write_report

    cfg = load_config(args.config, args.overrides)
    table, grid = fetch_runs(cfg.tracking, args.parent)
    info = provenance(args.command_line, experiment=cfg.tracking.experiment, parent_run=str(args.parent),
                      **runs_provenance(table))
    out = args.out or Path("results") / "report" / cfg.tracking.experiment
    print("\n".join(str(path) for path in write_report(table, grid, out, info).values()))


def cmd_extract_codes(args: argparse.Namespace) -> None:
    from nar_bench.config import load_config
    from nar_bench.data.codes import MANIFEST
    from nar_bench.extract_codes import extract_codes

    shard = {} if args.shard_size is None else {"shard_size": args.shard_size}
    out = extract_codes(load_config(args.config, args.overrides), args.out_dir, **shard)
    manifest = json.loads((out / MANIFEST).read_text())
    counts = " ".join(f"{split}={entry['count']}" for split, entry in manifest["splits"].items())
    print(f"codes={out} {counts} num_tokens={manifest['num_tokens']} vocab_size={manifest['vocab_size']} "
          f"num_classes={manifest['num_classes']}")


def cmd_train_tokenizer(args: argparse.Namespace) -> None:
    from nar_bench.config import load_config
    from nar_bench.train_tokenizer import train_tokenizer

    summary = train_tokenizer(load_config(args.config, args.overrides))
    if summary:
        print(" ".join(f"{k}={v}" for k, v in summary.items()))


def cmd_order_gifs(args: argparse.Namespace) -> None:
    from nar_bench.visualize import write_order_gifs

    checkpoints = dict(item.split("=", 1) for item in args.ckpt)
    for path in write_order_gifs(args.out, args.paradigms, args.config, args.overrides, checkpoints, args.label):
        print(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nar-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one configured generator (logs to MLflow)")
    p.add_argument("config", help="experiment YAML, e.g. experiments/demo.yaml")
    p.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. model.size=B")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="sample a class grid from a trained Lightning checkpoint")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", default="samples.png")
    p.add_argument("overrides", nargs="*", help="e.g. eval.sampling.cfg_scale=3")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("bench", help="throughput sweep: paradigm x size x batch size (tables, plots, MLflow)")
    p.add_argument("config", help="experiment YAML, e.g. experiments/throughput_sweep.yaml")
    p.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. bench.batch_sizes=[1,8,64]")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("sweep", help="train + evaluate every point of a sweep YAML (one MLflow parent run, a child "
                                     "per point); writes tables and a plot to results/<yaml name>/")
    p.add_argument("config", help="sweep YAML, e.g. experiments/ablation_heads.yaml")
    p.add_argument("overrides", nargs="*", help="dotlist overrides applied to every point, e.g. trainer.max_steps=50")
    p.add_argument("--only", help="comma-separated variant names to run (default: all)")
    p.add_argument("--out", help="results folder (default: results/<yaml name>)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="tables and a plot of the MLflow runs of an experiment")
    p.add_argument("config", help="YAML whose tracking settings name the MLflow store and experiment")
    p.add_argument("overrides", nargs="*", help="e.g. tracking.experiment=cfg_sweep")
    p.add_argument("--parent", help="only the child runs of this sweep (parent) run id; 'latest' = newest sweep")
    p.add_argument("--out", help="results folder (default: results/report/<experiment>)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("extract-codes", help="tokenize an image dataset once into sharded .npy codes + labels "
                                             "(train on them with data.name=codes data.root=<out_dir>)")
    p.add_argument("config", help="experiment YAML naming the data and the tokenizer")
    p.add_argument("out_dir", help="new folder for the codes (must not exist)")
    p.add_argument("--shard-size", type=int, default=None, help="codes per .npy shard (default 100000)")
    p.add_argument("overrides", nargs="*", help="e.g. data.name=imagefolder data.root=... tokenizer.checkpoint=...")
    p.set_defaults(func=cmd_extract_codes)

    p = sub.add_parser("train-tokenizer", help="train a learned tokenizer (vq, msvq); prints the weights' path, "
                                               "usable as tokenizer.checkpoint")
    p.add_argument("config", help="experiment YAML naming the data and the tokenizer")
    p.add_argument("overrides", nargs="*", help="e.g. tokenizer.name=vq trainer.max_steps=2000")
    p.set_defaults(func=cmd_train_tokenizer)
    p = sub.add_parser("order-gifs", help="GIFs of the generation order, one frame per decoding step")
    p.add_argument("--out", default="results", help="folder for order_<paradigm>.gif")
    p.add_argument("--paradigms", nargs="+", default=["ar", "nar", "par", "maskgit"])
    p.add_argument("--config", default="experiments/demo.yaml")
    p.add_argument("--ckpt", action="append", default=[], metavar="PARADIGM=PATH",
                   help="trained Lightning checkpoint for a paradigm (repeatable)")
    p.add_argument("--label", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="config dotlist overrides for untrained models")
    p.set_defaults(func=cmd_order_gifs)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # overrides may follow options (`sweep x.yaml --only a k=v`), which plain parse_args rejects
    args, extra = parser.parse_known_args(argv)
    if any(arg.startswith("-") for arg in extra) or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    args.command_line = shlex.join(["nar-bench", *argv])  # provenance of written results
    try:
        args.func(args)
    except NarBenchError as err:
        print(f"nar-bench: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
