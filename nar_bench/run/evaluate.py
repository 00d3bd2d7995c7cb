"""``nar-bench evaluate <config> --ckpt <official file | .ckpt>``: the number a paper would print.

The protocol lives in ``nar_bench.evaluation`` (``evaluate_checkpoint``); this verb parses, runs it
and prints the metrics, how fast it ran and where the samples are. The config is read and checked before the
protocol (and torch) is imported; the keys the YAML and the overrides set are what a run's
checkpoint is compared with.
"""

from __future__ import annotations

import argparse


def main(args: argparse.Namespace) -> None:
    from nar_bench.config import given_keys, load_config

    cfg = args.cfg or load_config(args.config, args.overrides)
    given = given_keys(args.config, args.overrides, cfg)
    from nar_bench.evaluation import evaluate_checkpoint
    from nar_bench.evaluation.protocol import speed_line

    record = evaluate_checkpoint(cfg, args.ckpt, args.num_samples, args.name, args.out, args.png_dir,
                                 args.num_classes, getattr(args, "command_line", None), given=given,
                                 overwrite=args.overwrite)
    if record:
        print(" ".join(f"{k}={v:.4f}" for k, v in record["metrics"].items()))
        print(f"speed ({record['settings']['engine']} engine): {speed_line(record['speed'])}")
        print(f"samples: {record['samples']}")
