"""RandAR: registry and options, the official step schedule (256 / 88 steps on 16x16), every token
decoded exactly once, cached decoding == teacher-forced forward, CFG ramp, training, RandAR-L's
size, and the official checkpoint layout against a re-statement of the official forward.
Tiny models, CPU, fp32.

Official code read (ziqipang/RandAR, via its forks in the reference index): ``RandAR/model/randar_gpt.py``
(``RandARTransformer.forward_train``, ``get_position_instruction_tokens``, ``generate``,
``batch_apply_rotary_emb``), ``RandAR/model/utils.py`` (``calculate_num_query_tokens_for_parallel_decoding``,
``interleave_tokens``); the LlamaGen pieces ``randar_gpt.py`` imports from its ``llamagen_gpt.py``
(``precompute_freqs_cis_2d``, RMSNorm, FeedForward, LabelEmbedder) as LlamaGen's ``gpt.py`` copies in the
index state them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nar_bench.checkpoints import load_official, to_official
from nar_bench.config import load_config
from nar_bench.errors import NarBenchError
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.nn.transformer import TransformerConfig, count_parameters
from nar_bench.paradigms.contract import decode_forward_gap, decode_with_step_logits
from nar_bench.paradigms.model_config import paradigm_options
from nar_bench.paradigms.randar import RandAR, RandAROptions, randar_step_counts
from nar_bench.registry import PARADIGMS
from nar_bench.tokenizers.base import CodeSpace
from tests.conftest import on_grid

VOCAB, CLASSES = 16, 4
DECODE_ATOL = 1e-5


def tiny(grid=(4, 4), dropout=0.0, seed=0, **options) -> RandAR:
    torch.manual_seed(seed)
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=2, vocab_size=VOCAB, num_classes=CLASSES,
                            token_dropout=dropout, resid_dropout=dropout, ffn_dropout=dropout, class_dropout=dropout)
    options.setdefault("steps", 6)
    model = RandAR(*on_grid(cfg, grid), RandAROptions(**options))
    nn.init.normal_(model.backbone.output.weight, std=0.5)  # zero-initialised as in LlamaGen
    return model


def test_registered_and_configured_by_name():
    assert PARADIGMS["randar"] is RandAR
    cfg = load_config(None, ["model.paradigm=randar", "model.options.order=permutation", "model.options.order_seed=3",
                             "model.options.steps=256", "model.options.cfg_ramp=false"])
    assert paradigm_options(cfg.model) == RandAROptions(order="permutation", order_seed=3, steps=256, cfg_ramp=False)
    assert RandAROptions() == RandAROptions(order="random", order_seed=0, steps=88, cfg_ramp=True)  # released


def official_step_counts(block_size: int, num_inference_steps: int) -> list[int]:
    """Re-statement of the official ``generate`` loop's pointer arithmetic (query index, query count,
    ``calculate_num_query_tokens_for_parallel_decoding``): tokens decoded at each step."""
    counts, idx, cur, step = [], 0, 1, 0
    while idx <= block_size - cur and idx <= block_size - 1:
        counts.append(cur)
        step += 1
        target = min(int((1.0 - math.cos(math.pi / 2.0 * (step + 1) / num_inference_steps)) * block_size + 1),
                     block_size)
        nxt = min(max(target - idx - cur, 1), block_size - idx - cur)
        idx, cur = idx + cur, nxt
    return counts


@pytest.mark.parametrize("grid, steps", [((16, 16), 256), ((16, 16), 88), ((16, 16), 2), ((24, 24), 88),
                                         ((4, 4), 6), ((4, 4), 16)])
def test_step_counts_follow_the_official_schedule(grid, steps):
    n = grid[0] * grid[1]
    counts = randar_step_counts(n, steps)
    assert counts == official_step_counts(n, steps)
    assert len(counts) == steps and sum(counts) == n and counts[0] == 1 and min(counts) >= 1
    if steps == n:
        assert counts == [1] * n  # one token a step


def test_16x16_decodes_in_256_or_88_steps_every_token_exactly_once():
    for steps in (256, 88):
        model = tiny((16, 16), steps=steps)
        assert model.num_steps == steps
        tokens, recorded = decode_with_step_logits(model, torch.tensor([0, 1]), SamplingConfig(cfg_scale=1.0))
        assert len(recorded) == steps
        assert [positions.shape[1] for positions, _ in recorded] == model.step_counts()
        produced = torch.cat([positions for positions, _ in recorded], dim=1)  # (B, N) raster positions in decode order
        for row in produced:
            assert row.sort().values.equal(torch.arange(256))  # every token exactly once
        assert not produced[0].equal(produced[1])  # order=random: each sample its own order
        for sample in range(2):
            assert torch.bincount(model.token_steps(sample), minlength=steps).tolist() == model.step_counts()
    assert randar_step_counts(256, 88)[:24] == [1] * 24 and max(randar_step_counts(256, 88)) == 5


@pytest.mark.parametrize("options, match", [
    (dict(order="zigzag"), r"model\.options\.order='zigzag' is not valid; choose one of: raster, diagonal, random, "
                           r"halton, locality, permutation \(permutation: the fixed order drawn from"),
    (dict(steps=1), r"model\.options\.steps=1 cannot be realised .* on 16 tokens: choose 2\.\.16"),
    (dict(steps=17), r"model\.options\.steps=17 cannot be realised .* choose 2\.\.16"),
    (dict(steps=88), r"model\.options\.steps=88 cannot be realised .* choose 2\.\.16"),
])
def test_bad_options_raise_one_clear_line(options, match):
    with pytest.raises(NarBenchError, match=match) as err:
        tiny((4, 4), **options)
    assert "\n" not in str(err.value)


def test_bad_order_in_a_config_is_refused_by_name():
    cfg = load_config(None, ["model.paradigm=randar", "model.options.order=zigzag"])
    with pytest.raises(NarBenchError, match="order='zigzag' is not valid"):
        paradigm_options(cfg.model)


def test_fixed_orders_have_a_schedule_random_has_none():
    assert [s.tolist() for s in tiny(order="raster").schedule()] == [[0], [1, 2], [3, 4], [5, 6, 7], [8, 9, 10, 11],
                                                                     [12, 13, 14, 15]]
    perm = torch.cat(tiny(order="permutation", order_seed=5).schedule())
    assert perm.sort().values.equal(torch.arange(16)) and not perm.equal(torch.arange(16))
    assert perm.equal(torch.cat(tiny(order="permutation", order_seed=5, seed=9).schedule()))  # seed = the order
    with pytest.raises(NarBenchError, match="no fixed raster schedule"):
        tiny().schedule()


@pytest.mark.parametrize("order", ["random", "raster", "permutation", "diagonal", "halton", "locality"])
@pytest.mark.parametrize("steps", [16, 6, 2])
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0], ids=["cfg_off", "cfg_on"])
def test_cached_decoding_equals_teacher_forced_forward(order, steps, cfg_scale):
    """The shared contract (``decode_forward_gap``): each step's cached logits == ``forward_at_step``
    on the decoded codes (conditional and null-class rows), fp32."""
    model = tiny(order=order, steps=steps)
    gap = decode_forward_gap(model, torch.tensor([0, 3, 1]), SamplingConfig(cfg_scale=cfg_scale, top_k=8),
                             torch.Generator().manual_seed(0))
    assert gap < DECODE_ATOL


def test_one_token_a_step_is_the_training_forward_and_parallel_steps_hide_their_own_tokens():
    tokens, labels = torch.randint(0, VOCAB, (3, 16)), torch.tensor([0, 1, 2])
    orders = torch.stack([torch.randperm(16) for _ in range(3)])
    sequential, parallel = tiny(steps=16).eval(), tiny(steps=6).eval()
    with torch.no_grad():
        train = sequential.ordered_forward(tokens, labels, orders)
        torch.testing.assert_close(sequential.parallel_logits(tokens, labels, orders), train, atol=DECODE_ATOL, rtol=0)
        view = parallel.parallel_logits(tokens, labels, orders)
    gap = (view - train).abs().amax(-1)  # (B, N) raster positions
    first = torch.tensor(parallel.starts[:-1])  # decode index of each step's leading token
    leading = torch.zeros(3, 16, dtype=torch.bool).scatter_(1, orders[:, first], True)
    assert (gap[leading] < DECODE_ATOL).all()  # a step's first query sees everything decoded before it
    assert (gap[~leading] > 1e-3).all()  # the others do not see their step's other tokens


def test_cfg_ramps_from_one_to_the_scale_over_the_decoded_tokens():
    model = tiny(steps=6)  # counts 1, 2, 2, 3, 4, 4 -> tokens before each step 0, 1, 3, 5, 8, 12
    assert [model.guidance_scale(s, 4.0) for s in range(6)] == [1 + 3 * a / 16 for a in (0, 1, 3, 5, 8, 12)]
    assert [tiny(steps=6, cfg_ramp=False).guidance_scale(s, 4.0) for s in range(6)] == [4.0] * 6
    codes = model.generate(torch.tensor([0, 1]), SamplingConfig(cfg_scale=4.0, top_k=4))
    assert codes.shape == (2, 4, 4) and codes.min() >= 0 and codes.max() < VOCAB
    assert model.training  # generate restores the mode


def test_train_step_reduces_loss():
    model = tiny()
    tokens = torch.randint(0, VOCAB, (8, 16), generator=torch.Generator().manual_seed(1))
    labels = torch.arange(8) % CLASSES
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = model.loss(tokens, labels)  # a fresh random order per sample at every step
        opt.zero_grad()
        loss.backward()
        assert model.pos_instruct_embeddings.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_randar_l_has_the_released_343m_parameters():
    """RandAR-L (paper Table / README: 0.3B, 343M; ``randar_l_0.3b_llamagen.yaml``): LlamaGen-L dims
    (1024, 24 layers, 16 heads), vocab 16384, 1000 classes, 16x16 tokens, plus the (1, 1024)
    instruction embedding."""
    cfg = load_config(None, ["model.paradigm=randar", "model.size=L"])
    from nar_bench.paradigms.model_config import transformer_config

    with torch.device("meta"):
        model = RandAR(transformer_config(cfg.model, 16384, 1000), CodeSpace(16384, (16, 16)))
    assert count_parameters(model) == 342_912_000
    assert round(count_parameters(model) / 1e6) == 343


# --- official checkpoint layout -----------------------------------------------------------------------------
def official_rope_2d(grid: int, head_dim: int, cls_token_num: int, base: float = 10000.0) -> Tensor:
    """``precompute_freqs_cis_2d``: half the rotary pairs for rows, half for columns; zero rows for the condition."""
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    freqs = torch.outer(torch.arange(grid).float(), freqs)
    table = torch.cat([freqs[:, None, :].expand(-1, grid, -1), freqs[None, :, :].expand(grid, -1, -1)], dim=-1)
    cache = torch.stack([table.cos(), table.sin()], dim=-1).flatten(0, 1)
    return torch.cat([torch.zeros(cls_token_num, head_dim // 2, 2), cache])


def official_rotate(x: Tensor, freqs: Tensor) -> Tensor:
    """``batch_apply_rotary_emb``: x (B, L, H, D), freqs (B, L, D/2, 2), interleaved pairs, real form."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    f = freqs.view(x.shape[0], x.shape[1], 1, xs.shape[3], 2)
    out = torch.stack([xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1],
                       xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]], dim=-1)
    return out.flatten(3).type_as(x)


def official_rms(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def official_forward_train(sd: dict[str, Tensor], idx: Tensor, cond_idx: Tensor, token_order: Tensor,
                           n_head: int, grid: int) -> Tensor:
    """``RandARTransformer.forward_train`` in eval mode on a state dict: token logits (B, N, V) in
    decode order (``logits[:, cls_token_num::2]``)."""
    bs, n = idx.shape
    dim = sd["tok_embeddings.weight"].shape[1]
    head_dim = dim // n_head
    freqs_cis = official_rope_2d(grid, head_dim, 1)
    idx = torch.gather(idx, 1, token_order)
    cond = sd["cls_embedding.embedding_table.weight"][cond_idx][:, None]
    tok = sd["tok_embeddings.weight"][idx]
    order_freqs = freqs_cis[1:][token_order]  # (B, N, D/2, 2)
    instruct = sd["pos_instruct_embeddings"].view(1, 1, n_head, head_dim).repeat(bs, n, 1, 1)
    instruct = official_rotate(instruct, order_freqs).view(bs, n, dim)
    inter = torch.zeros(bs, 2 * n, dim)
    inter[:, ::2], inter[:, 1::2] = instruct, tok  # interleave_tokens
    h = torch.cat([cond, inter], dim=1)
    inter_freqs = torch.zeros(bs, 2 * n, *order_freqs.shape[2:])
    inter_freqs[:, ::2], inter_freqs[:, 1::2] = order_freqs, order_freqs
    freqs = torch.cat([freqs_cis[:1].unsqueeze(0).repeat(bs, 1, 1, 1), inter_freqs], dim=1)
    layers = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
    for i in range(layers):
        p = f"layers.{i}."
        x = official_rms(h, sd[p + "attention_norm.weight"])
        q, k, v = F.linear(x, sd[p + "attention.wqkv.weight"]).split([dim, dim, dim], dim=-1)
        q, k, v = (t.view(bs, -1, n_head, head_dim) for t in (q, k, v))
        q, k = official_rotate(q, freqs), official_rotate(k, freqs)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        h = h + F.linear(out.transpose(1, 2).reshape(bs, -1, dim), sd[p + "attention.wo.weight"])
        x = official_rms(h, sd[p + "ffn_norm.weight"])
        ffn = F.silu(F.linear(x, sd[p + "feed_forward.w1.weight"])) * F.linear(x, sd[p + "feed_forward.w3.weight"])
        h = h + F.linear(ffn, sd[p + "feed_forward.w2.weight"])
    logits = F.linear(official_rms(h, sd["norm.weight"]), sd["output.weight"]).float()
    return logits[:, 1::2]


def random_official_state(model: RandAR, seed: int) -> dict[str, Tensor]:
    """An official-layout RandAR state dict (RandARTransformer's key names) with random weights."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in to_official(model).items():
        state[key] = torch.randn(value.shape, generator=gen) * 0.2 + (1.0 if key.endswith("norm.weight") else 0.0)
    return state


def test_official_state_dict_loads_round_trips_and_matches_the_official_forward():
    model = tiny((4, 4)).eval()
    state = random_official_state(model, seed=3)
    assert set(state) == {"tok_embeddings.weight", "cls_embedding.embedding_table.weight", "pos_instruct_embeddings",
                          "norm.weight", "output.weight"} | {k for k in state if k.startswith("layers.")}
    assert state["pos_instruct_embeddings"].shape == (1, 32)
    load_official(model, {"model": state})
    back = to_official(model)
    assert set(back) == set(state) and all(back[k].equal(v) for k, v in state.items())

    tokens, labels = torch.randint(0, VOCAB, (3, 16)), torch.tensor([0, 3, CLASSES])  # incl. the null class
    orders = torch.stack([torch.randperm(16) for _ in range(3)])
    with torch.no_grad():
        ours = model.ordered_forward(tokens, labels, orders)  # raster order
        official = official_forward_train(state, tokens, labels, orders, n_head=2, grid=4)  # decode order
    torch.testing.assert_close(ours.gather(1, orders[..., None].expand(-1, -1, VOCAB)), official, atol=1e-5, rtol=0)


def test_official_checkpoint_mismatches_name_the_keys(tmp_path):
    model = tiny((4, 4))
    state = random_official_state(model, seed=1)
    del state["pos_instruct_embeddings"]
    state["layers.0.attention.wqkv.weight"] = torch.zeros(3 * 32, 16)
    torch.save(state, tmp_path / "llamagen.pt")
    with pytest.raises(NarBenchError, match=r"missing keys \(1\): pos_instruct_embeddings .*use model\.paradigm=ar.*"
                                            r"layers\.0\.attention\.wqkv\.weight \(96, 16\) vs \(96, 32\)"):
        load_official(model, tmp_path / "llamagen.pt")


def test_a_randar_file_loaded_as_raster_ar_is_named_as_randar():
    from nar_bench.paradigms.raster_ar import RasterAR

    state = random_official_state(tiny((4, 4)), seed=2)
    ar = RasterAR(*on_grid(tiny((4, 4)).model_cfg, (4, 4)))
    with pytest.raises(NarBenchError, match=r"unexpected keys \(1\): pos_instruct_embeddings.*"
                                            r"looks like a RandAR GPT .*use model\.paradigm=randar"):
        load_official(ar, state)


def test_training_draws_random_orders_whatever_order_it_decodes():
    """``order`` is decode-only: the training loss of one weight set is the same under every order
    (same random orders drawn from the same seed), so one checkpoint decodes in all of them."""
    tokens, labels = torch.randint(0, VOCAB, (3, 16)), torch.tensor([0, 1, 2])
    losses = []
    for order in ("raster", "diagonal", "halton", "locality"):
        model = tiny(order=order)
        torch.manual_seed(7)
        losses.append(model.loss(tokens, labels))
    assert all(torch.equal(loss, losses[0]) for loss in losses)
    assert "order" in RandAR.decode_options and "steps" in RandAR.decode_options


def test_shared_fixed_orders_and_locality_decode_every_token_once():
    diagonal = torch.cat(tiny(order="diagonal").schedule())
    assert diagonal.tolist() == [0, 1, 4, 2, 5, 8, 3, 6, 9, 12, 7, 10, 13, 11, 14, 15]  # anti-diagonals i + j
    model = tiny(order="locality")
    model.generate(torch.tensor([0, 1]), SamplingConfig(cfg_scale=1.0), torch.Generator().manual_seed(0))
    for sample in range(2):
        assert torch.bincount(model.token_steps(sample), minlength=6).tolist() == model.step_counts()
