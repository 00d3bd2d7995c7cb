"""Work of one VQ-16 decode at 256 px, counted with forward hooks on the CPU (the figures of the
"ceilings" section of README.md): convolution FLOPs (2 x outputs x kernel taps x input channels) and
the bf16 bytes the 39 GroupNorms move (moments read, apply read + write).
    python results/evaluate_speed/diag/decoder_cost.py
"""
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import nar_bench  # noqa: E402, F401  (first: torchvision next to a CPU torch)
from nar_bench.config import load_config  # noqa: E402
from nar_bench.nn.group_norm import GroupNorm  # noqa: E402
from nar_bench.tokenizers import build_tokenizer  # noqa: E402


def main():
    cfg = load_config(None, ["data.image_size=256", "data.grid_size=16", "tokenizer.name=vq",
                             "tokenizer.options.preset=vq_ds16", "tokenizer.untrained=true"])
    tokenizer = build_tokenizer(cfg).eval()
    totals = {"conv_flop": 0, "norm_bytes": 0, "norms": 0}

    def conv(module, inputs, output):
        totals["conv_flop"] += 2 * output.numel() * module.weight[0].numel()

    def norm(module, inputs, output):
        totals["norm_bytes"] += 3 * 2 * inputs[0].numel()
        totals["norms"] += 1

    for module in tokenizer.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(conv)
        if isinstance(module, GroupNorm):
            module.register_forward_hook(norm)
    with torch.no_grad():
        tokenizer.decode(torch.randint(0, tokenizer.code_space.vocab_size, (1, 256)))
    print(f"per image: {totals['conv_flop'] / 1e9:.1f} GFLOP of convolutions; {totals['norms']} GroupNorms moving "
          f"{totals['norm_bytes'] / 1e9:.3f} GB in bf16")


if __name__ == "__main__":
    main()
