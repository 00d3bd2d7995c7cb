"""Converters between official checkpoints and nar-bench models, so released weights give the
same logits in nar-bench.

A converter is a function ``model -> {nar-bench state-dict key: official key}``; one per
paradigm name in ``OFFICIAL_KEY_MAPS`` at the bottom of this file. ``load_official`` and
``to_official`` work for every paradigm through that map.
"""

from __future__ import annotations

import argparse
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from nar_bench.errors import NarBenchError
from nar_bench.nn.transformer import MODEL_SIZES
from nar_bench.paradigms.base import Paradigm

WRAPPERS = ("model", "module")  # DDP saves {"model": ...}, DeepSpeed {"module": ...}, FSDP raw
DROPPED_KEYS = ("freqs_cis",)  # LlamaGen's RoPE table: nar-bench rebuilds it
SHOWN_KEYS = 5  # how many missing / unexpected keys an error message lists
DOWNLOAD_HINT = (
    "download the official GPT weights (LlamaGen: c2i_{B,L,XL,XXL}_256.pt from the LlamaGen release on "
    "Hugging Face, FoundationVision/LlamaGen; NAR: the NAR authors' released NAR-images checkpoints) "
    "and point model.checkpoint at the .pt file"
)


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Loads a checkpoint file on the CPU and unwraps it to the raw state dict."""
    path = Path(path)
    if not path.is_file():
        raise NarBenchError(f"checkpoint file '{path}' not found; {DOWNLOAD_HINT}")
    # Official training scripts also save their argparse namespace next to the weights.
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            culprit = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line), "")
            raise NarBenchError(f"checkpoint '{path}' holds objects other than tensors, which are not loaded "
                                f"for safety ({culprit}); re-save just its state dict with torch.save") from None
    return unwrap(checkpoint)


def unwrap(checkpoint: Mapping) -> dict[str, Tensor]:
    """State dict inside a "model" (DDP) / "module" (DeepSpeed) wrapper, or the raw (FSDP) dict."""
    if not isinstance(checkpoint, Mapping):
        raise NarBenchError(f"checkpoint holds a {type(checkpoint).__name__}, expected a state dict")
    for key in WRAPPERS:
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    return {k: v for k, v in checkpoint.items() if k not in DROPPED_KEYS}


def key_map(model: Paradigm) -> dict[str, str]:
    """{nar-bench key: official key} of ``model``, by its paradigm name."""
    if model.name not in OFFICIAL_KEY_MAPS:
        raise NarBenchError(f"no official checkpoint converter for paradigm '{model.name}'; "
                            f"available: {', '.join(OFFICIAL_KEY_MAPS)}")
    mapping = OFFICIAL_KEY_MAPS[model.name](model)
    unmapped = sorted(set(model.state_dict()) - set(mapping))
    if unmapped:
        raise ValueError(f"converter for '{model.name}' leaves keys unmapped: {unmapped[:SHOWN_KEYS]}")
    return mapping


def to_official(model: Paradigm) -> dict[str, Tensor]:
    """The model's weights under the official key names (a raw, FSDP-style state dict)."""
    mapping = key_map(model)
    return {mapping[k]: v for k, v in model.state_dict().items()}


def load_official(model: Paradigm, source: str | Path | Mapping) -> Paradigm:
    """Loads an official checkpoint (file path, wrapped or raw state dict) into ``model`` in place.

    Raises NarBenchError naming missing / unexpected / mis-shaped keys and the model size the
    checkpoint looks like when it does not fit ``model``.
    """
    state = read_checkpoint(source) if isinstance(source, (str, Path)) else unwrap(source)
    mapping = key_map(model)
    expected = model.state_dict()
    missing = sorted((o for o in mapping.values() if o not in state), key=top_level_first)
    unexpected = sorted(set(state) - set(mapping.values()), key=top_level_first)
    misshaped = [f"{o} {tuple(state[o].shape)} vs {tuple(expected[k].shape)}"
                 for k, o in mapping.items() if o in state and state[o].shape != expected[k].shape]
    if missing or unexpected or misshaped:
        problems = [f"{what} ({len(keys)}): {', '.join(keys[:SHOWN_KEYS])}{', ...' if len(keys) > SHOWN_KEYS else ''}"
                    for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                       ("shape mismatches, checkpoint vs model", misshaped)) if keys]
        raise NarBenchError(f"checkpoint does not fit {describe_model(model)}: {'; '.join(problems)}. "
                            f"The checkpoint looks like {describe_checkpoint(state)}; "
                            "set model.paradigm / model.size (and data vocab / classes) to match")
    model.load_state_dict({k: state[o] for k, o in mapping.items()})
    return model


# --- describing mismatches in error messages ------------------------------------------------------------
def top_level_first(key: str) -> tuple[int, str]:
    """Sort key listing top-level weights (medusa_norm.weight) before per-layer ones: they tell
    the architectures apart."""
    return key.count("."), key


def size_name(dim: int, n_layers: int) -> str | None:
    return next((name for name, (d, n, _) in MODEL_SIZES.items() if (d, n) == (dim, n_layers)), None)


def describe_model(model: Paradigm) -> str:
    cfg = model.model_cfg
    size = size_name(cfg.dim, cfg.n_layers)
    return (f"paradigm '{model.name}' model.size={size or 'custom'} (dim {cfg.dim}, {cfg.n_layers} layers, "
            f"vocab {cfg.vocab_size}, {cfg.num_classes} classes)")


def describe_checkpoint(state: Mapping[str, Tensor]) -> str:
    """Architecture inferred from an official GPT state dict, e.g. 'NAR ... model.size=B (dim 768, ...)'."""
    if "tok_embeddings.weight" not in state:
        return "no LlamaGen-style GPT (it has no tok_embeddings.weight)"
    vocab, dim = state["tok_embeddings.weight"].shape
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("layers.")}
    vertical = "medusa_output.weight" in state
    n_layers = len(blocks) - int(vertical)  # NAR stores its vertical block as one more layer
    kind = "a NAR GPT (with vertical head: use model.paradigm=nar)" if vertical else "a LlamaGen GPT (no vertical head)"
    size = size_name(dim, n_layers)
    table = state.get("cls_embedding.embedding_table.weight")
    classes = f", {table.shape[0] - 1} classes" if table is not None else ""
    return (f"{kind} of model.size={size or 'custom (no MODEL_SIZES entry)'} "
            f"(dim {dim}, {n_layers} layers, vocab {vocab}{classes})")


# --- converters, one per paradigm ---------------------------------------------------------------------
def llamagen_key_map(model: Paradigm) -> dict[str, str]:
    """LlamaGen GPT: nar-bench's backbone uses LlamaGen's names, only the "backbone." prefix differs."""
    return {k: k.removeprefix("backbone.") for k in model.state_dict() if k.startswith("backbone.")}


def nar_key_map(model: Paradigm) -> dict[str, str]:
    """NAR-images GPT: LlamaGen GPT + vertical block as layers.{L} + medusa_norm / medusa_output."""
    renames = {"vertical_block.": f"layers.{model.model_cfg.n_layers}.",
               "vertical_norm.": "medusa_norm.", "vertical_output.": "medusa_output."}
    mapping = llamagen_key_map(model)  # heads=single has no vertical keys: plain LlamaGen layout
    for k in model.state_dict():
        for ours, official in renames.items():
            if k.startswith(ours):
                mapping[k] = official + k.removeprefix(ours)
    return mapping


OFFICIAL_KEY_MAPS: dict[str, Callable[[Paradigm], dict[str, str]]] = {
    "ar": llamagen_key_map,
    "nar": nar_key_map,
}
