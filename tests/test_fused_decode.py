import pytest
import torch
from torch._dynamo.utils import counters

from nar_bench.nn.fused_decode import (
    decode_attention,
    disable_fused_decode,
    enable_fused_decode,
    per_row_freqs,
    rope_rows,
)
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.nn.transformer import TransformerConfig, apply_rope
from nar_bench.paradigms.nar import NAR
from nar_bench.paradigms.par import PAR
from nar_bench.paradigms.raster_ar import RasterAR
from tests.conftest import on_grid, randomize_heads

GREEDY = SamplingConfig(cfg_scale=2.0, temperature=0.0)
CFG = TransformerConfig(dim=32, n_layers=2, n_heads=4, vocab_size=24, num_classes=5)


def tiny(cls, grid=(4, 4), **options):
    torch.manual_seed(0)
    model = cls(*on_grid(CFG, grid), cls.Options(**options)) if options else cls(*on_grid(CFG, grid))
    return randomize_heads(model).eval()


def step_logits_trace(model, labels):
    """Greedy tokens plus every step's logits, recorded around ``step_logits``."""
    seen = []
    original = model.step_logits

    def record(step, fed):
        out = original(step, fed)
        seen.append(out.float().clone())
        return out

    model.step_logits = record
    try:
        tokens = model.generate(labels, GREEDY)
    finally:
        del model.step_logits
    return tokens, seen


def test_rope_rows_matches_apply_rope():
    x = torch.randn(3, 5, 4, 16)
    freqs = torch.randn(5, 8, 2)
    ref = apply_rope(x, freqs)
    rows = rope_rows(x.reshape(15, 4, 16), freqs.expand(3, 5, 8, 2).reshape(15, 8, 2))
    torch.testing.assert_close(rows.view(3, 5, 4, 16), ref, rtol=1e-6, atol=1e-6)


def test_sdpa_decode_attention_writes_cache_and_attends_to_prefix():
    b, n, h, d, start, seq = 3, 2, 4, 8, 5, 9
    q, k, v = (torch.randn(b * n, h, d) for _ in range(3))
    k_cache, v_cache = torch.randn(b, h, seq, d), torch.randn(b, h, seq, d)
    prefix_k, prefix_v = k_cache[:, :, :start].clone(), v_cache[:, :, :start].clone()
    out = decode_attention(q, k, v, k_cache, v_cache, start, n, backend="sdpa")
    keys = torch.cat([prefix_k, k.view(b, n, h, d).transpose(1, 2)], 2)
    values = torch.cat([prefix_v, v.view(b, n, h, d).transpose(1, 2)], 2)
    scores = (q.view(b, n, h, d).transpose(1, 2) @ keys.transpose(-1, -2)) / d**0.5
    ref = (scores.softmax(-1) @ values).transpose(1, 2).reshape(b * n, h * d)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k_cache[:, :, :start + n], keys)


@pytest.mark.parametrize("cls, options", [(RasterAR, {}), (NAR, {}), (PAR, {"regions": 4})])
def test_fused_region_functions_equal_eager_decoding(cls, options):
    """The fused step's maths (uncompiled) gives the eager engine's greedy tokens and logits."""
    model = tiny(cls, **options)
    labels = torch.tensor([1, 3])
    ref_tokens, ref_logits = step_logits_trace(model, labels)
    assert enable_fused_decode(model, compile=False, attention="sdpa") >= CFG.n_layers
    tokens, logits = step_logits_trace(model, labels)
    disable_fused_decode(model)
    assert torch.equal(tokens, ref_tokens)
    for a, b in zip(logits, ref_logits, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_compiled_fused_decoding_equals_eager_without_recompiles():
    """fp32 on CPU: one graph per region serves every step, both paradigms and two batch sizes
    (NAR feeds 1, 1, 2, 3, 4, 3, 2 tokens per step; PAR 1, 1, 1, 1, 4, 4, ...)."""
    nar, par = tiny(NAR), tiny(PAR, regions=4)
    refs = {(name, b): step_logits_trace(m, torch.arange(b) % 5) for name, m in (("nar", nar), ("par", par))
            for b in (2, 3)}
    torch._dynamo.reset()
    counters.clear()
    for m in (nar, par):
        m.compile_decoding(attention="sdpa")
    for (name, b), (ref_tokens, ref_logits) in refs.items():
        tokens, logits = step_logits_trace(nar if name == "nar" else par, torch.arange(b) % 5)
        assert torch.equal(tokens, ref_tokens)
        for x, y in zip(logits, ref_logits, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
    assert counters["stats"]["unique_graphs"] == 2  # attention_projections + block_outputs, compiled once


def test_decode_attention_rotates_q_and_the_cached_k():
    """With ``freqs`` the step's q and k are rotated (``rope_rows``) before the cache write and the
    attention; v is not."""
    b, n, h, d, start, seq = 2, 3, 2, 8, 4, 9
    q, k, v = (torch.randn(b * n, h, d) for _ in range(3))
    freqs = torch.randn(n, d // 2, 2)
    caches = [torch.randn(b, h, seq, d) for _ in range(2)]
    copies = [c.clone() for c in caches]
    out = decode_attention(q, k, v, *caches, start, n, backend="sdpa", freqs=freqs)
    rows = freqs.expand(b, n, d // 2, 2).reshape(b * n, d // 2, 2)
    assert torch.equal(per_row_freqs(freqs, b, n), rows)
    ref = decode_attention(rope_rows(q, rows), rope_rows(k, rows), v, *copies, start, n, backend="sdpa")
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert torch.equal(caches[0], copies[0]) and torch.equal(caches[1], copies[1])
    assert not torch.equal(caches[0][:, :, start:start + n], k.view(b, n, h, d).transpose(1, 2))


@pytest.mark.cuda
@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("n, start", [(1, 0), (1, 17), (4, 9), (16, 100), (40, 200), (100, 150)])
def test_triton_decode_attention_matches_sdpa(n, start, rope):
    torch.manual_seed(n)
    b, h, d, seq = 6, 12, 64, 257
    dev, dt = "cuda", torch.bfloat16
    qkv = torch.randn(b * n, 3, h, d, device=dev, dtype=dt)
    q, k, v = qkv.unbind(1)
    freqs = rope_table_rows(n, d, dev) if rope else None
    caches = [torch.randn(b, h, seq, d, device=dev, dtype=dt) for _ in range(4)]
    caches[2].copy_(caches[0])
    caches[3].copy_(caches[1])
    ref = decode_attention(q, k, v, caches[0], caches[1], start, n, backend="sdpa", freqs=freqs)
    out = decode_attention(q, k, v, caches[2], caches[3], start, n, backend="triton", freqs=freqs)
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    assert torch.equal(caches[3], caches[1])
    if rope:  # rotated in fp32 by both, rounded to bf16: at most one bf16 step apart (FMA contraction)
        torch.testing.assert_close(caches[2], caches[0], rtol=8e-3, atol=1e-5)
    else:
        assert torch.equal(caches[2], caches[0])


@pytest.mark.cuda
@pytest.mark.parametrize("n, start", [(1, 17), (16, 100), (100, 150)])
def test_triton_decode_attention_in_fp32_keeps_fp32_precision(n, start):
    """fp32 caches: full-precision dots (TF32 would round their inputs to 10 mantissa bits, errors
    ~1e-3), so the graph engine's fp32 tokens equal the eager engine's."""
    torch.manual_seed(n)
    b, h, d, seq = 2, 4, 64, 257
    q, k, v = torch.randn(b * n, 3, h, d, device="cuda").unbind(1)
    caches = [torch.randn(b, h, seq, d, device="cuda") for _ in range(2)]
    ref = decode_attention(q, k, v, caches[0].clone(), caches[1].clone(), start, n, backend="sdpa")
    out = decode_attention(q, k, v, caches[0].clone(), caches[1].clone(), start, n, backend="triton")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def rope_table_rows(n, head_dim, device):
    """A real 2D rotary table for the first n tokens of a 16 x 16 grid, as the paradigms feed it."""
    from nar_bench.nn.transformer import rope_table
    from nar_bench.paradigms.base import grid_coords

    return rope_table(grid_coords((16, 16))[:n], head_dim).to(device)
