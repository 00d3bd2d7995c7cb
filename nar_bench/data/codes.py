"""Pre-extracted token codes ("codes"): train any paradigm without running the tokenizer per step.

``data.root`` is a folder written by ``nar_bench.run.extract_codes``::

    manifest.json            grid, num_tokens, vocab_size, num_classes, class_names, the tokenizer
                             (name, checkpoint, options) and image data it came from, shards per split
    train/codes_00000.npy    (n, num_tokens) uint16 (int32 for vocabularies over 65536)
    train/labels_00000.npy   (n,) int64
    val/...

Items are (codes int64 (num_tokens,), label); GeneratorModule feeds integer batches to the
paradigm as codes. The tokenizer "codes" rebuilds the recorded tokenizer from the manifest, so a
run needs neither the images nor a repeated tokenizer config.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from nar_bench.errors import NarBenchError
from nar_bench.registry import DATASETS

MANIFEST = "manifest.json"
FORMAT = 1
REEXTRACT = "re-run extract-codes into a fresh folder"


def codes_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.int32)


def read_manifest(root: str | Path | None) -> dict[str, Any]:
    if not root:
        raise NarBenchError("data.root is not set; point it at a folder written by extract-codes")
    path = Path(root).expanduser() / MANIFEST
    if not path.is_file():
        raise NarBenchError(f"'{path}' not found: data.root must be a folder written by extract-codes "
                            "(nar-bench extract-codes <config> <out_dir>)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise NarBenchError(f"'{path}' is not valid JSON ({err}); {REEXTRACT}") from None
    if manifest.get("format") != FORMAT:
        raise NarBenchError(f"'{path}' has format {manifest.get('format')}, this nar-bench reads {FORMAT}; {REEXTRACT}")
    return manifest


class CodesDataset(Dataset):
    def __init__(self, root: str | Path | None, split: str = "train"):
        manifest = read_manifest(root)
        self.root = Path(root).expanduser()
        if split not in manifest["splits"]:
            have = ", ".join(manifest["splits"])
            raise NarBenchError(f"'{self.root}' has no '{split}' codes (has: {have}); {REEXTRACT}")
        self.num_tokens, self.vocab_size = manifest["num_tokens"], manifest["vocab_size"]
        self.grid = tuple(manifest["grid"])
        self.class_names, self.num_classes = manifest["class_names"], manifest["num_classes"]
        entry = manifest["splits"][split]
        self.code_files = [self.root / shard["codes"] for shard in entry["shards"]]
        labels = [self._check_shard(shard) for shard in entry["shards"]]
        self.labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        if len(self.labels) != entry["count"]:
            raise NarBenchError(f"'{self.root}' {split} shards hold {len(self.labels)} items, the manifest says "
                                f"{entry['count']}; {REEXTRACT}")
        self.starts = np.cumsum([0] + [len(x) for x in labels]).tolist()
        self._codes: list[np.ndarray] | None = None  # memory-mapped on first access (in each worker)

    def _check_shard(self, shard: dict[str, Any]) -> np.ndarray:
        """Reads a shard's labels and checks both files against the manifest; returns the labels."""
        codes_path, labels_path = self.root / shard["codes"], self.root / shard["labels"]
        for path in (codes_path, labels_path):
            if not path.is_file():
                raise NarBenchError(f"shard '{path}' listed in the manifest is missing; {REEXTRACT}")
        codes = np.load(codes_path, mmap_mode="r")
        labels = np.load(labels_path)
        expected = (shard["count"], self.num_tokens)
        dtype = codes_dtype(self.vocab_size)
        if codes.shape != expected or labels.shape != (shard["count"],) or codes.dtype != dtype:
            raise NarBenchError(f"shard '{codes_path}' is {codes.dtype} {codes.shape} with {labels.shape[0]} labels, "
                                f"expected {dtype} {expected} and {shard['count']} labels; {REEXTRACT}")
        return labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._codes is None:
            self._codes = [np.load(path, mmap_mode="r") for path in self.code_files]
        shard = bisect.bisect_right(self.starts, index) - 1
        row = self._codes[shard][index - self.starts[shard]]
        return torch.from_numpy(row.astype(np.int64)), int(self.labels[index])


@DATASETS.register("codes")
def codes(data_cfg, split: str) -> CodesDataset:
    return CodesDataset(data_cfg.root, split)
