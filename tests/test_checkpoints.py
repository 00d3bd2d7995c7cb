"""Official checkpoint converters: key layout, round trips, wrappers and clear errors."""

import argparse
import datetime

import pytest
import torch

from nar_bench.checkpoints import load_official, to_official
from nar_bench.errors import NarBenchError
from nar_bench.nn.transformer import TransformerConfig
from nar_bench.paradigms.nar import NAR, NAROptions
from nar_bench.paradigms.raster_ar import RasterAR
from tests.conftest import on_grid, randomize_heads

GRID = (3, 4)


def tiny_config() -> TransformerConfig:
    return TransformerConfig(dim=64, n_layers=2, n_heads=4, vocab_size=32, num_classes=5)


def build(kind: str, seed: int):
    torch.manual_seed(seed)
    model = {"nar": lambda: NAR(*on_grid(tiny_config(), GRID)),
             "nar_single": lambda: NAR(*on_grid(tiny_config(), GRID), NAROptions(heads="single")),
             "ar": lambda: RasterAR(*on_grid(tiny_config(), GRID))}[kind]()
    return randomize_heads(model, std=0.2).eval()  # zero-initialised heads: all logits would be equal


@torch.no_grad()
def logits(model):
    g = torch.Generator().manual_seed(3)
    return model(torch.randint(0, 32, (2, 12), generator=g), torch.tensor([1, 4]))


def test_nar_official_layout_is_llamagen_plus_vertical_head():
    nar, ar = to_official(build("nar", 0)), to_official(build("ar", 0))
    extra = set(nar) - set(ar)
    assert set(ar) <= set(nar)
    assert {"medusa_norm.weight", "medusa_output.weight", "layers.2.attention.wqkv.weight",
            "layers.2.feed_forward.w2.weight", "layers.2.attention_norm.weight"} <= extra
    assert all(k.startswith(("layers.2.", "medusa_")) for k in extra)
    assert {"tok_embeddings.weight", "cls_embedding.embedding_table.weight", "norm.weight", "output.weight",
            "layers.1.attention.wo.weight", "layers.0.feed_forward.w1.weight"} <= set(ar)
    assert set(to_official(build("nar_single", 0))) == set(ar)


@pytest.mark.parametrize("kind", ["nar", "nar_single", "ar"])
def test_round_trip_gives_identical_logits(kind):
    source, target = build(kind, 0), build(kind, 1)
    assert not torch.equal(logits(source), logits(target))
    load_official(target, to_official(source))
    assert torch.equal(logits(source), logits(target))


@pytest.mark.parametrize("wrapper", ["model", "module", None])
def test_wrapped_checkpoint_files_load(tmp_path, wrapper):
    source, target = build("nar", 0), build("nar", 1)
    state = to_official(source) | {"freqs_cis": torch.zeros(13, 4, 2)}  # LlamaGen's RoPE buffer
    checkpoint = {wrapper: state, "steps": 10, "args": argparse.Namespace(gpt_model="GPT-B")} if wrapper else state
    path = tmp_path / "nar.pt"
    torch.save(checkpoint, path)
    load_official(target, str(path))
    assert torch.equal(logits(source), logits(target))


def test_nar_checkpoint_into_raster_ar_names_unexpected_keys():
    with pytest.raises(NarBenchError) as err:
        load_official(build("ar", 0), {"model": to_official(build("nar", 0))})
    msg = str(err.value)
    assert "unexpected keys (9): medusa_norm.weight, medusa_output.weight, layers.2." in msg
    assert "model.paradigm=nar" in msg and "model.size=tiny" in msg


def test_llamagen_checkpoint_into_nar_names_missing_keys():
    with pytest.raises(NarBenchError) as err:
        load_official(build("nar", 0), to_official(build("ar", 0)))
    msg = str(err.value)
    assert "missing keys (9): medusa_norm.weight, medusa_output.weight, layers.2." in msg
    assert "looks like a LlamaGen GPT (no vertical head) of model.size=tiny" in msg


def test_size_mismatch_names_shapes_and_the_checkpoint_size():
    config = TransformerConfig(dim=768, n_layers=12, n_heads=12, vocab_size=16384, num_classes=1000)
    with torch.device("meta"):
        nar_b = to_official(NAR(*on_grid(config, (16, 16))))
    with pytest.raises(NarBenchError) as err:
        load_official(build("nar", 0), {"module": nar_b})
    msg = str(err.value)
    assert "paradigm 'nar' model.size=tiny (dim 64, 2 layers, vocab 32, 5 classes)" in msg
    assert "tok_embeddings.weight (16384, 768) vs (32, 64)" in msg
    assert "unexpected keys (70): " in msg
    assert "model.size=B (dim 768, 12 layers, vocab 16384, 1000 classes)" in msg


def test_missing_file_names_the_path_and_the_fix(tmp_path):
    path = tmp_path / "c2i_B_256.pt"
    with pytest.raises(NarBenchError, match=f"'{path}' not found.*model.checkpoint"):
        load_official(build("ar", 0), path)


def test_checkpoint_with_arbitrary_objects_is_refused_clearly(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"model": to_official(build("ar", 0)), "saved_on": datetime.date(2025, 3, 13)}, path)
    with pytest.raises(NarBenchError, match="objects other than tensors.*datetime.date"):
        load_official(build("ar", 0), path)
