"""Tokenizer "codes": the tokenizer that extracted ``data.root``'s codes, rebuilt from its manifest.

With ``data.name=codes`` set ``tokenizer.name=codes``: grid, vocabulary and the tokenizer's name,
options, checkpoint and image size come from the manifest, so they cannot drift from the codes.
``tokenizer.checkpoint``, when set, replaces the recorded checkpoint path (a moved file); other
``tokenizer.*`` keys are ignored. The result is the real tokenizer (e.g. ``VQTokenizer``), so
decoding samples and paradigm hooks that need tokenizer internals (VAR) work as with images.
"""

from __future__ import annotations

import copy

from omegaconf import DictConfig, OmegaConf

from nar_bench.data.codes import read_manifest
from nar_bench.errors import NarBenchError
from nar_bench.registry import TOKENIZERS
from nar_bench.tokenizers.base import Tokenizer


@TOKENIZERS.register("codes")
class ManifestTokenizer:
    @classmethod
    def recorded_data(cls, cfg: DictConfig) -> dict[str, int]:
        """The image size and grid the codes decode to (the manifest's, not ``cfg.data``'s)."""
        manifest = read_manifest(cfg.data.root)
        return {"image_size": manifest["data"]["image_size"], "grid_size": manifest["data"]["grid_size"]}

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Tokenizer:
        manifest = read_manifest(cfg.data.root)
        recorded = manifest["tokenizer"]
        if recorded["name"] == "codes":
            raise NarBenchError(f"manifest of '{cfg.data.root}' names tokenizer 'codes'; "
                                "re-extract with a real tokenizer")
        inner_cfg = copy.deepcopy(cfg)
        OmegaConf.set_readonly(inner_cfg, False)
        inner_cfg.tokenizer.name = recorded["name"]
        inner_cfg.tokenizer.checkpoint = cfg.tokenizer.checkpoint or recorded["checkpoint"]
        inner_cfg.tokenizer.options = recorded["options"]  # replaced, not merged: the codes fix the architecture
        inner_cfg.data.update(cls.recorded_data(cfg))
        tokenizer = TOKENIZERS[recorded["name"]].from_config(inner_cfg)
        found = (tokenizer.vocab_size, list(tokenizer.grid))
        if found != (manifest["vocab_size"], manifest["grid"]):
            raise NarBenchError(f"tokenizer '{recorded['name']}' rebuilt from '{cfg.data.root}' has vocab {found[0]} "
                                f"and grid {found[1]}, the codes have {manifest['vocab_size']} and {manifest['grid']}; "
                                "point tokenizer.checkpoint at the weights the codes were extracted with")
        return tokenizer
