"""Official PAR checkpoints (PAR-XL-4x.pt, PAR-XXL-4x.pt, PAR-3B-4x.pt, PAR-3B-16x.pt) -> ``par``.

A PAR checkpoint is a LlamaGen GPT state dict plus the n-1 transition tokens, which PAR's gpt.py
keeps in an embedding table of ``spe_token_num`` = n-1 rows under
``spe_tok_embeddings.special_embeddings.weight``. The LlamaGen keys map one to one onto
``PAR.backbone`` (our Transformer uses LlamaGen's names).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nar_bench.errors import NarBenchError
from nar_bench.paradigms.par import PAR

PAR_TRANSITION_KEY = "spe_tok_embeddings.special_embeddings.weight"
RECOMPUTED_BUFFERS = ("freqs_cis",)  # rotary tables are rebuilt from the config, never loaded


def unwrap_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The state dict inside a LlamaGen-style checkpoint: under "model" (DDP), "module"
    (DeepSpeed) or "state_dict", or the mapping itself."""
    for key in ("model", "module", "state_dict"):
        if isinstance(checkpoint.get(key), Mapping):
            return dict(checkpoint[key])
    return dict(checkpoint)


def llamagen_backbone_state(official: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """LlamaGen GPT keys -> keys of a paradigm's ``backbone`` (same names, prefixed)."""
    return {f"backbone.{k}": v for k, v in official.items() if k not in RECOMPUTED_BUFFERS}


def convert_par(official: Mapping[str, Tensor], transition_key: str = PAR_TRANSITION_KEY,
                backbone_state: Callable[[Mapping[str, Tensor]], dict[str, Tensor]] = llamagen_backbone_state,
                ) -> dict[str, Tensor]:
    """Official PAR GPT state dict -> state dict of the ``par`` paradigm."""
    if transition_key not in official:
        raise NarBenchError(
            f"no transition tokens under '{transition_key}' in the checkpoint (is it a LlamaGen, not a PAR, "
            "checkpoint?); pass transition_key=<name> if this file stores them under another key"
        )
    rest = {k: v for k, v in official.items() if k != transition_key}
    return {**backbone_state(rest), "transition_tokens": official[transition_key]}


def load_state_strict(module: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """``load_state_dict`` that names every missing, unexpected or mis-shaped key in one
    NarBenchError instead of PyTorch's traceback."""
    expected = module.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
              for k in sorted(expected.keys() & state.keys()) if state[k].shape != expected[k].shape]
    problems = [f"{what}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("shape mismatch (checkpoint != model)", shapes)) if keys]
    if problems:
        raise NarBenchError(f"checkpoint {source} does not fit the model ({'; '.join(problems)}); "
                            "check model.size, the tokenizer's vocabulary and the number of classes")
    module.load_state_dict(state)


def load_par_checkpoint(paradigm: PAR, path: str | Path, transition_key: str = PAR_TRANSITION_KEY) -> None:
    """Loads an official PAR checkpoint file into ``paradigm`` (a PAR built with the same size,
    vocabulary, classes and ``regions``)."""
    path = Path(path)
    if not path.is_file():
        raise NarBenchError(f"PAR checkpoint '{path}' not found; download e.g. PAR-XL-4x.pt from the PAR release")
    state = convert_par(unwrap_checkpoint(torch.load(path, map_location="cpu", weights_only=True)), transition_key)
    rows = state["transition_tokens"].shape[0]
    if rows != paradigm.num_regions - 1:
        raise NarBenchError(f"{path.name} has {rows} transition tokens, i.e. {rows + 1} regions, but "
                            f"model.options.regions={paradigm.num_regions}; set model.options.regions={rows + 1}")
    load_state_strict(paradigm, state, str(path))
