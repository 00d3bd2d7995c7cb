"""Official checkpoint converters: key layout, round trips, wrappers and clear errors."""

import argparse
import datetime

import pytest
import torch

from nar_bench.checkpoints import load_generator_weights, load_official, to_official
from nar_bench.errors import NarBenchError
from nar_bench.nn.transformer import TransformerConfig
from nar_bench.paradigms.nar import NAR, NAROptions
from nar_bench.paradigms.nar_video import VideoNAR, VideoNAROptions
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


# --- NAR-videos LARP_AR (nar_video) ------------------------------------------------------------------------
def official_video_state(dim: int, n_layer: int, vocab: int = 8192, classes: int = 101, positions: int = 1025,
                         extra_blocks: int = 2, device: str = "meta") -> dict[str, torch.Tensor]:
    """The key names and shapes of NAR-videos' LARP_AR state dict, written from its model file:
    LlamaGen embeddings, n_layer + attn_num_back + attn_num_down blocks under ``layers``, the
    absolute table ``abs_pe`` and the heads ``norm_R/output_R``, ``norm_D/output_D``, ``norm_B/output_B``."""
    hidden = -(-int(8 * dim / 3) // 256) * 256
    shapes = {"tok_embeddings.weight": (vocab, dim), "cls_embedding.embedding_table.weight": (classes + 1, dim),
              "abs_pe": (1, positions, dim)}
    for i in range(n_layer + extra_blocks):
        block = {"attention.wqkv": (3 * dim, dim), "attention.wo": (dim, dim), "feed_forward.w1": (hidden, dim),
                 "feed_forward.w3": (hidden, dim), "feed_forward.w2": (dim, hidden), "attention_norm": (dim,),
                 "ffn_norm": (dim,)}
        shapes |= {f"layers.{i}.{name}.weight": shape for name, shape in block.items()}
    for head in "RDB":
        shapes |= {f"norm_{head}.weight": (dim,), f"output_{head}.weight": (vocab, dim)}
    return {k: torch.empty(shape, device=device) for k, shape in shapes.items()}


def video_model(vocab: int = 32, seed: int = 0, **options) -> VideoNAR:
    torch.manual_seed(seed)
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=4, vocab_size=vocab, num_classes=5)
    return randomize_heads(VideoNAR(*on_grid(cfg, (2, 2, 3)), VideoNAROptions(**options)), std=0.2).eval()


@pytest.mark.parametrize("position_embedding", ["learned", "sincos"])
def test_nar_video_official_state_dict_loads_at_nar_l_size(position_embedding):
    with torch.device("meta"):
        cfg = TransformerConfig(dim=1024, n_layers=24, n_heads=16, vocab_size=8192, num_classes=101)
        model = VideoNAR(*on_grid(cfg, (4, 16, 16)), VideoNAROptions(position_embedding=position_embedding))
    state = official_video_state(1024, 24)
    load_official(model, state)  # raises on any missing, unexpected or mis-shaped key
    assert set(to_official(model)) == set(state)


@pytest.mark.parametrize("options", [{}, {"position_embedding": "sincos"}, {"down_blocks": 2, "back_blocks": 0}])
def test_nar_video_official_file_round_trip_gives_identical_logits(tmp_path, options):
    source, target = video_model(seed=0, **options), video_model(seed=1, **options)
    tokens, labels = torch.randint(0, 32, (2, 12), generator=torch.Generator().manual_seed(3)), torch.tensor([1, 4])
    with torch.no_grad():
        assert not torch.allclose(source(tokens, labels), target(tokens, labels))
        # NAR-videos' trainer saves {"model": {"name", "args", "sd"}, "optimizer": ..., "epoch": ...}
        path = tmp_path / "epoch-last.pth"
        torch.save({"model": {"name": "llama-abs-L", "args": {"num_classes": 5}, "sd": to_official(source)},
                    "epoch": 3}, path)
        load_generator_weights(target, path)
        assert torch.equal(source(tokens, labels), target(tokens, labels))


def test_nar_video_mismatch_names_the_keys_and_the_setting():
    state = to_official(video_model(vocab=16))
    with pytest.raises(NarBenchError) as err:
        load_official(video_model(vocab=32), state)
    msg = str(err.value)
    assert "output_R.weight (16, 32) vs (32, 32)" in msg and "LARP tokenizer has 8192 codes" in msg
    assert "a NAR video GPT" in msg and "model.paradigm=nar_video" in msg
    with pytest.raises(NarBenchError, match="missing keys .*layers.4"):
        load_official(video_model(down_blocks=2), to_official(video_model()))
