"""``nar-bench sample``: a class grid of samples from a trained Lightning checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import OmegaConf

from nar_bench.config import merge
from nar_bench.errors import NarBenchError
from nar_bench.images import save_samples
from nar_bench.lit.module import GeneratorModule
from nar_bench.nn.sampling import SamplingConfig


def main(args: argparse.Namespace) -> None:
    if not Path(args.ckpt).is_file():
        raise NarBenchError(f"checkpoint '{args.ckpt}' not found; train first (nar-bench train ...) or fix the path")
    module = GeneratorModule.load_from_checkpoint(args.ckpt, map_location="cpu")
    if torch.cuda.is_available():
        module = module.cuda()
    cfg = merge(module.cfg, OmegaConf.from_dotlist(args.overrides), source="command-line overrides")
    images = module.sample_grid(cfg.seed, SamplingConfig(**cfg.eval.sampling))
    print(save_samples(images, args.out, nrow=module.grid_columns))
