"""`nar-bench` command line: thin verbs over the package.

    nar-bench train experiments/demo.yaml model.paradigm=nar trainer.max_steps=10
    nar-bench sample --ckpt results/runs/<run>/checkpoints/last.ckpt eval.sampling.cfg_scale=3
    nar-bench bench experiments/throughput_sweep.yaml bench.batch_sizes=[1,8,64]
    nar-bench sweep experiments/ablation_heads.yaml [--only ntp_raster,nar_dim_heads_mixed] trainer.max_steps=50
    nar-bench report experiments/ablation_heads.yaml --parent latest
    nar-bench train-tokenizer experiments/demo.yaml tokenizer.name=vq tokenizer.options.preset=synthetic
    nar-bench extract-codes experiments/demo.yaml results/codes/imagenet data.name=imagefolder data.root=...
    nar-bench reference /data/imagenet/val --out ref.npz --image-size 256
    nar-bench evaluate experiments/demo.yaml --ckpt last.ckpt eval.reference=ref.npz [--num-samples 50000]
"""

from __future__ import annotations

import argparse
import errno
import importlib
import shlex
import sys
from pathlib import Path

from nar_bench.errors import NarBenchError


def add_overwrite(p: argparse.ArgumentParser, what: str = "write into a folder holding committed results") -> None:
    """The one opt-in past ``tracking.provenance.guard_output`` that a verb writing results offers."""
    p.add_argument("--overwrite", action="store_true", help=what)


def add_fresh(p: argparse.ArgumentParser, kept: str) -> None:
    """The opt-out of resuming that the verbs with a parent run offer (``nar_bench.tracking.resume``)."""
    p.add_argument("--fresh", action="store_true",
                   help=f"start a new parent run instead of resuming this one's (re-running keeps {kept})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nar-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one configured generator (logs to MLflow)")
    p.add_argument("config", help="experiment YAML, e.g. experiments/demo.yaml")
    p.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. model.size=B")
    p.add_argument("--resume", action="store_true", help="continue the newest run of this name from its last.ckpt "
                                                         "(same MLflow run; = trainer.resume=latest)")
    p.set_defaults(verb="nar_bench.run.train")

    p = sub.add_parser("sample", help="sample a class grid from a trained Lightning checkpoint")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", help="PNG (.gif for video models) to write (default results/runs/samples/<paradigm>-"
                                 "<ckpt stem>-<ckpt hash>-<settings hash>.png)")
    add_overwrite(p, "replace an existing --out file (or one committed to git)")
    p.add_argument("overrides", nargs="*", help="eval.* overrides, e.g. eval.sampling.cfg_scale=3 seed=1")
    p.set_defaults(verb="nar_bench.run.sample")

    p = sub.add_parser("bench", help="throughput sweep: paradigm x size x batch size (tables, plots, MLflow)")
    p.add_argument("config", help="experiment YAML, e.g. experiments/throughput_sweep.yaml")
    p.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. bench.batch_sizes=[1,8,64]")
    p.add_argument("--out", help="results folder (default: bench.output_dir, results/runs/throughput)")
    add_overwrite(p)
    add_fresh(p, "the models it measured on this GPU model at this commit")
    p.set_defaults(verb="nar_bench.bench.runner")

    p = sub.add_parser("sweep", help="train + evaluate every point of a sweep YAML (one MLflow parent run, a child "
                                     "per point); writes tables and a plot to results/runs/<yaml name>/")
    p.add_argument("config", help="sweep YAML, e.g. experiments/ablation_heads.yaml")
    p.add_argument("overrides", nargs="*", help="dotlist overrides applied to every point, e.g. trainer.max_steps=50")
    p.add_argument("--only", help="comma-separated variant names to run (default: all)")
    p.add_argument("--out", help="results folder (default: results/runs/<yaml name>)")
    add_overwrite(p)
    add_fresh(p, "its FINISHED points")
    p.set_defaults(verb="nar_bench.run.sweep")

    p = sub.add_parser("report", help="tables and a plot of one sweep's MLflow runs (mean ± std over distinct seeds)")
    p.add_argument("config", help="YAML whose tracking settings name the MLflow store and experiment")
    p.add_argument("overrides", nargs="*", help="e.g. tracking.experiment=cfg_sweep")
    p.add_argument("--parent", default="latest", help="sweep (parent) run id to report; 'latest' (default) = the "
                                                      "newest FINISHED sweep; 'all' = every run of the experiment")
    p.add_argument("--out", help="results folder (default: results/runs/report/<experiment>)")
    add_overwrite(p)
    p.set_defaults(verb="nar_bench.run.report")

    p = sub.add_parser("extract-codes", help="tokenize an image dataset once into sharded .npy codes + labels "
                                             "(train on them with data.name=codes data.root=<out_dir>)")
    p.add_argument("config", help="experiment YAML naming the data and the tokenizer")
    p.add_argument("out_dir", help="new folder for the codes (must not exist)")
    p.add_argument("--shard-size", type=int, default=None, help="codes per .npy shard (default 100000)")
    p.add_argument("overrides", nargs="*", help="e.g. data.name=imagefolder data.root=... tokenizer.checkpoint=...")
    p.set_defaults(verb="nar_bench.run.extract_codes")

    p = sub.add_parser("train-tokenizer", help="train a learned tokenizer (vq, msvq); prints the weights' path, "
                                               "usable as tokenizer.checkpoint")
    p.add_argument("config", help="experiment YAML naming the data and the tokenizer")
    p.add_argument("overrides", nargs="*", help="e.g. tokenizer.name=vq trainer.max_steps=2000")
    p.set_defaults(verb="nar_bench.run.train_tokenizer")

    p = sub.add_parser("evaluate", help="paper-comparable FID / sFID / IS / precision / recall of a checkpoint "
                                        "against an ADM reference batch (eval.reference=<file.npz>)")
    p.add_argument("config", help="experiment YAML describing the model, tokenizer and eval.sampling")
    p.add_argument("--ckpt", required=True, help="nar-bench Lightning .ckpt or an official weights file")
    p.add_argument("--num-samples", type=int, default=50_000, help="images to sample, a multiple of the class "
                                                                   "count (default 50000)")
    p.add_argument("--name", help="folder <output_dir>/<name>/ and MLflow run name (default eval-<paradigm>-<ckpt "
                                  "stem>-<ckpt hash>-<settings hash>)")
    p.add_argument("--out", help="samples .npz (default <output_dir>/<name>/samples.npz; shards beside it)")
    p.add_argument("--png-dir", help="also write every sample as a PNG into this folder")
    p.add_argument("--num-classes", type=int, help="classes of an official checkpoint (default: the dataset's)")
    add_overwrite(p, "replace a results folder or samples file holding another checkpoint's or other settings' "
                     "evaluation (or committed files)")
    p.add_argument("overrides", nargs="*", help="e.g. eval.reference=VIRTUAL_imagenet256_labeled.npz "
                                                "eval.sampling.cfg_scale=2.0 trainer.devices=8")
    p.set_defaults(verb="nar_bench.run.evaluate")

    p = sub.add_parser("reference", help="ADM-format reference batch (images + mu/sigma + mu_s/sigma_s) from an "
                                         "image folder or a dataset config")
    p.add_argument("source", help="image folder (ImageNet layout) or experiment YAML naming the data")
    p.add_argument("--out", required=True, help="reference .npz to write")
    p.add_argument("--image-size", type=int, default=256, help="center-crop size for an image folder (default 256)")
    p.add_argument("--split", default="val", help="dataset split for a YAML source (default val)")
    p.add_argument("--num-images", type=int, help="use the first N images (default: all)")
    p.add_argument("--inception-weights", help="InceptionV3 weights file (default $NAR_BENCH_INCEPTION_WEIGHTS)")
    add_overwrite(p, "replace an existing --out file")
    p.add_argument("overrides", nargs="*", help="dotlist overrides for a YAML source, e.g. data.num_val=2048")
    p.set_defaults(verb="nar_bench.run.reference")

    p = sub.add_parser("order-gifs", help="GIFs of the generation order, one frame per decoding step")
    p.add_argument("--out", default="results/runs/order", help="folder for order_<paradigm>.gif")
    add_overwrite(p)
    p.add_argument("--paradigms", nargs="+", help="default: every registered paradigm of raster H x W images")
    p.add_argument("--config", default="experiments/demo.yaml")
    p.add_argument("--ckpt", action="append", default=[], metavar="PARADIGM=PATH",
                   help="trained Lightning checkpoint for a paradigm (repeatable)")
    p.add_argument("--label", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="config dotlist overrides for untrained models")
    p.set_defaults(verb="nar_bench.run.order_gifs")
    return parser


WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)

# verb -> its argument naming the experiment YAML that, with the overrides, is read and checked here
# (schema, types, numeric domains) before the verb's module, and torch, Lightning and MLflow with it,
# is imported: a typo fails in about a second, not after the imports
CONFIG_ARGUMENT = {"train": "config", "bench": "config", "sweep": "config", "report": "config",
                   "extract-codes": "config", "train-tokenizer": "config", "evaluate": "config",
                   "order-gifs": "config", "reference": "source"}


def checked_config(args: argparse.Namespace):
    """The verb's config (``nar_bench.config.load_config``), or None for a verb without one (sample
    checks its few overrides itself; reference from an image folder). Imports no torch."""
    path = getattr(args, CONFIG_ARGUMENT.get(args.command, ""), None)
    if path is None or (args.command == "reference" and Path(path).suffix not in (".yaml", ".yml")):
        return None
    from nar_bench.config import load_config

    return load_config(path, args.overrides)


def one_line(err: NarBenchError) -> str:
    """The error's message on one line. A DataLoader worker re-raises an error with the worker's
    traceback in the message: its last line is the error itself."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(err).__name__
    return lines[-1].split(f"{NarBenchError.__module__}.{NarBenchError.__name__}: ", 1)[-1].strip()


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
    from nar_bench.tracking.lifecycle import interruptible

    try:
        args.cfg = checked_config(args)  # before the verb's imports: a typo costs no torch import
        # Ctrl-C / SIGTERM in any verb: its open MLflow runs end KILLED, one line, exit 128 + signal
        with interruptible():
            if args.command == "sweep":  # checked before any training: a refused folder costs nothing
                from nar_bench.tracking.provenance import SCRATCH_ROOT, guard_output

                args.out = str(guard_output(args.out or SCRATCH_ROOT / Path(args.config).stem, args.overwrite))
            importlib.import_module(args.verb).main(args)  # imported here: --help needs no torch
    except NarBenchError as err:
        print(f"nar-bench: error: {one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # a disk that fills up or turns read-only mid-run: the place and the fix, not a traceback
        if err.errno not in WRITE_ERRNOS:
            raise
        where = f" '{err.filename}'" if err.filename else ""
        print(f"nar-bench: error: cannot write{where}: {err.strerror}; free space or make it writable, or write "
              "elsewhere (--out, output_dir)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
