"""Tokenize an image dataset once into sharded .npy codes (the official pipelines' approach).

``extract_codes(cfg, out_dir)`` runs ``cfg.tokenizer`` over the train and val splits of
``cfg.data`` (imagefolder, shapes, ...) and writes the layout that ``nar_bench.data.codes``
reads. Everything is written into a temporary sibling folder that is renamed to ``out_dir`` only
when complete, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

import nar_bench.data  # noqa: F401  (registers the datasets)
from nar_bench.data.codes import FORMAT, MANIFEST, codes_dtype
from nar_bench.errors import NarBenchError
from nar_bench.registry import DATASETS
from nar_bench.tokenizers import build_tokenizer
from nar_bench.tracking.provenance import check_writable

SPLITS = ("train", "val")


def extract_codes(cfg: DictConfig, out_dir: str | Path, shard_size: int = 100_000) -> Path:
    """Writes ``out_dir`` (must not exist) with codes, labels and manifest.json; returns it."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists():
        raise NarBenchError(f"output folder '{out_dir}' already exists; delete it or choose another")
    if cfg.data.name == "codes":
        raise NarBenchError("data.name is 'codes': extract-codes reads images; set data.name to an image dataset "
                            "such as imagefolder")
    if shard_size < 1:
        raise NarBenchError(f"shard_size must be positive, got {shard_size}")
    check_writable(out_dir, "out_dir")
    if cfg.tokenizer.checkpoint and not Path(cfg.tokenizer.checkpoint).is_file():
        raise NarBenchError(f"tokenizer.checkpoint '{cfg.tokenizer.checkpoint}' not found; fix the path")
    tokenizer = build_tokenizer(cfg)
    if any(True for _ in tokenizer.parameters()) and not cfg.tokenizer.checkpoint:
        raise NarBenchError(f"tokenizer '{cfg.tokenizer.name}' has learned weights but tokenizer.checkpoint is not "
                            "set; codes of an untrained tokenizer are noise: point it at trained weights")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = tokenizer.to(device).eval()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        datasets = {split: DATASETS[cfg.data.name](cfg.data, split) for split in SPLITS}
        with torch.inference_mode():  # one image fixes the code count (grid cells, or all scales for msvq)
            num_tokens = tokenizer.encode(datasets["train"][0][0][None].to(device)).flatten(1).shape[1]
        splits = {split: write_split(tokenizer, ds, tmp, split, cfg.data, shard_size, device)
                  for split, ds in datasets.items()}
        manifest = build_manifest(cfg, tokenizer, datasets["train"], num_tokens, splits)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


@torch.inference_mode()
def write_split(tokenizer, dataset, root: Path, split: str, data_cfg: DictConfig, shard_size: int,
                device: str) -> dict:
    """Encodes ``dataset`` into ``root/split/{codes,labels}_{k:05d}.npy``; returns the manifest entry."""
    (root / split).mkdir()
    loader = DataLoader(dataset, batch_size=data_cfg.batch_size, num_workers=data_cfg.num_workers)
    dtype = codes_dtype(tokenizer.vocab_size)
    shards, codes_buf, labels_buf = [], [], []

    def flush() -> None:
        k = len(shards)
        names = {"codes": f"{split}/codes_{k:05d}.npy", "labels": f"{split}/labels_{k:05d}.npy"}
        np.save(root / names["codes"], np.concatenate(codes_buf).astype(dtype))
        np.save(root / names["labels"], np.concatenate(labels_buf).astype(np.int64))
        shards.append({**names, "count": sum(len(x) for x in labels_buf)})
        codes_buf.clear()
        labels_buf.clear()

    buffered = 0
    with tqdm(total=len(dataset), desc=f"extracting {split} codes", unit="image") as bar:
        for images, labels in loader:
            bar.update(len(images))
            codes = tokenizer.encode(images.to(device)).flatten(1).cpu().numpy()
            labels = labels.numpy()
            while len(codes):  # split batches at shard boundaries so every shard but the last is full
                take = min(len(codes), shard_size - buffered)
                codes_buf.append(codes[:take])
                labels_buf.append(labels[:take])
                codes, labels, buffered = codes[take:], labels[take:], buffered + take
                if buffered == shard_size:
                    flush()
                    buffered = 0
    if buffered:
        flush()
    return {"count": len(dataset), "shards": shards}


def build_manifest(cfg: DictConfig, tokenizer, train_set, num_tokens: int, splits: dict) -> dict:
    num_classes = train_set.num_classes
    names = getattr(train_set, "class_names", None) or [str(i) for i in range(num_classes)]
    checkpoint = cfg.tokenizer.checkpoint
    return {
        "format": FORMAT,
        "grid": list(tokenizer.grid),
        "num_tokens": num_tokens,
        "vocab_size": tokenizer.vocab_size,
        "num_classes": num_classes,
        "class_names": list(names),
        "tokenizer": {"name": cfg.tokenizer.name,
                      "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
                      "options": OmegaConf.to_container(cfg.tokenizer.options, resolve=True)},
        "data": {"name": cfg.data.name, "root": str(Path(cfg.data.root).resolve()) if cfg.data.root else None,
                 "image_size": cfg.data.image_size, "grid_size": cfg.data.grid_size},
        "splits": splits,
    }


def main(args: argparse.Namespace) -> None:
    from nar_bench.config import load_config

    shard = {} if args.shard_size is None else {"shard_size": args.shard_size}
    out = extract_codes(args.cfg or load_config(args.config, args.overrides), args.out_dir, **shard)
    manifest = json.loads((out / MANIFEST).read_text())
    counts = " ".join(f"{split}={entry['count']}" for split, entry in manifest["splits"].items())
    print(f"codes={out} {counts} num_tokens={manifest['num_tokens']} vocab_size={manifest['vocab_size']} "
          f"num_classes={manifest['num_classes']}")
