import torch

from nar_bench.nn.transformer import (
    MODEL_SIZES,
    Transformer,
    TransformerConfig,
    apply_rope,
    count_parameters,
    rope_table,
)


def llamagen_rope_2d(grid: int, n_elem: int, base: float = 10000.0) -> torch.Tensor:
    """LlamaGen's precompute_freqs_cis_2d (without the condition rows), written out independently."""
    half = n_elem // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    t = torch.arange(grid, dtype=torch.float32)
    f = torch.outer(t, freqs)
    grid_f = torch.cat([f[:, None, :].expand(-1, grid, -1), f[None, :, :].expand(grid, -1, -1)], dim=-1)
    return torch.stack([grid_f.cos(), grid_f.sin()], dim=-1).flatten(0, 1)


def test_rope_matches_llamagen_2d_layout():
    coords = torch.stack(torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij"), -1).reshape(-1, 2)
    assert torch.allclose(rope_table(coords, 64), llamagen_rope_2d(16, 64), atol=1e-6)


def test_rope_is_a_rotation_and_relative():
    coords = torch.tensor([[3, 5], [7, 1]])
    table = rope_table(coords, 16)
    q, k = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16)
    rq, rk = apply_rope(q, table), apply_rope(k, table)
    assert torch.allclose(rq.norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    # same offset between the two positions -> same dot product
    shifted = rope_table(coords + torch.tensor([2, 4]), 16)
    sq, sk = apply_rope(q, shifted), apply_rope(k, shifted)
    assert torch.allclose((rq[0, 0] * rk[0, 1]).sum(), (sq[0, 0] * sk[0, 1]).sum(), atol=1e-4)


def test_llamagen_b_parameter_count_and_swiglu_width():
    dim, n_layers, n_heads = MODEL_SIZES["B"]
    cfg = TransformerConfig(dim=dim, n_layers=n_layers, n_heads=n_heads)
    assert cfg.ffn_hidden == 2048  # int(2/3 * 4 * 768) rounded up to a multiple of 256
    with torch.device("meta"):
        model = Transformer(cfg)
    assert abs(count_parameters(model) - 110.9e6) < 0.1e6  # LlamaGen-B: 111M


def test_official_key_names():
    keys = set(Transformer(TransformerConfig(dim=32, n_layers=1, n_heads=4, vocab_size=8)).state_dict())
    assert {"tok_embeddings.weight", "cls_embedding.embedding_table.weight", "layers.0.attention.wqkv.weight",
            "layers.0.attention.wo.weight", "layers.0.feed_forward.w1.weight", "layers.0.feed_forward.w2.weight",
            "layers.0.feed_forward.w3.weight", "layers.0.attention_norm.weight", "layers.0.ffn_norm.weight",
            "norm.weight", "output.weight"} == keys


def test_output_layer_zero_initialised_and_null_class_row():
    model = Transformer(TransformerConfig(dim=32, n_layers=1, n_heads=4, vocab_size=8, num_classes=10))
    assert model.output.weight.abs().sum() == 0
    assert model.cls_embedding.embedding_table.num_embeddings == 11
