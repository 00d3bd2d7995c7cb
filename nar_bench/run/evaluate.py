"""``nar-bench evaluate <config> --ckpt <official file | .ckpt>``: the number a paper would print.

The protocol lives in ``nar_bench.evaluation`` (``evaluate_checkpoint``); this verb parses, runs it
and prints the metrics, how fast it ran and where the samples are.
"""

from __future__ import annotations

import argparse


def main(args: argparse.Namespace) -> None:
    from nar_bench.config import load_config
    from nar_bench.evaluation import evaluate_checkpoint
    from nar_bench.evaluation.protocol import speed_line

    record = evaluate_checkpoint(load_config(args.config, args.overrides), args.ckpt, args.num_samples, args.name,
                                 args.out, args.png_dir, args.num_classes, getattr(args, "command_line", None))
    if record:
        print(" ".join(f"{k}={v:.4f}" for k, v in record["metrics"].items()))
        print(f"speed ({record['settings']['engine']} engine): {speed_line(record['speed'])}")
        print(f"samples: {record['samples']}")
