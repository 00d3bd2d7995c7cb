"""LPD: registry and options, the official step table (20 steps on 16x16), every token decoded
exactly once, cached decoding == teacher-forced forward, the locality scheduler against a
re-statement of the official one and its defining property, per-token CFG ramp, training, LPD-L's
size, and the official checkpoint layout against a re-statement of the official forward.
Tiny models, CPU, fp32.

Official code read (mit-han-lab/lpd): ``models/lpd.py`` (``LPD.forward``, ``forward_decoder``,
``sample_tokens``, ``lpd_l``), ``models/block.py`` (``Block``, ``Attention``), ``models/mask.py``
(``generate_mask_mod``), ``orders/lpd_order.py`` (``lpd_order_schedule``, ``farthest_point_sampling``),
``orders/group_sizes_lookup.json``, ``engine.py`` and the README's model table (LPD-L 337M)."""

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
from nar_bench.paradigms.lpd import LPD, LPDOptions, group_size_table, lpd_group_sizes
from nar_bench.paradigms.model_config import paradigm_options
from nar_bench.paradigms.orders import halton_order, locality_orders
from nar_bench.registry import PARADIGMS
from nar_bench.tokenizers.base import CodeSpace
from tests.conftest import on_grid

VOCAB, CLASSES = 16, 4
DECODE_ATOL = 1e-5
# orders/group_sizes_lookup.json, "256 resolution" / "20 steps" (the released schedule)
OFFICIAL_20 = [1, 2, 4, 5, 7, 8, 10, 11, 12, 14, 15, 16, 17, 18, 18, 19, 19, 20, 20, 20]


def tiny(grid=(4, 4), dropout=0.0, seed=0, **options) -> LPD:
    torch.manual_seed(seed)
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=2, vocab_size=VOCAB, num_classes=CLASSES,
                            token_dropout=dropout, resid_dropout=dropout, ffn_dropout=dropout, class_dropout=dropout)
    options.setdefault("steps", 8)
    return LPD(*on_grid(cfg, grid), LPDOptions(**options))


def test_registered_and_configured_by_name():
    assert PARADIGMS["lpd"] is LPD
    cfg = load_config(None, ["model.paradigm=lpd", "model.options.order=halton", "model.options.steps=32",
                             "model.options.repulsion=3", "model.options.cfg_ramp=false"])
    assert paradigm_options(cfg.model) == LPDOptions(order="halton", steps=32, repulsion=3, cfg_ramp=False)
    assert LPDOptions() == LPDOptions(order="locality", steps=20, repulsion=2, cfg_ramp=True)  # released


def test_step_counts_follow_the_official_table():
    table = group_size_table(256)
    assert sorted(table) == [8, 12, 16, 20, 24, 32, 64, 128, 256]
    assert lpd_group_sizes(256, 20) == OFFICIAL_20
    assert lpd_group_sizes(256, 8) == [1, 15, 24, 32, 40, 45, 49, 50]
    assert lpd_group_sizes(256, 128)[40:42] == [1, 2] and lpd_group_sizes(256, 128)[-1] == 3
    assert lpd_group_sizes(1024, 48)[-3:] == [33, 33, 34]  # the released 512 px schedule
    for n in (256, 1024, 16, 64):
        for steps, sizes in group_size_table(n).items():
            assert len(sizes) == steps and sum(sizes) == n and sizes[0] == 1 and min(sizes) >= 1
    assert group_size_table(16) == {8: [1, 1, 1, 2, 3, 2, 3, 3], 16: [1] * 16}  # the 8-step table rescaled


def test_16x16_decodes_in_20_steps_every_token_exactly_once():
    model = tiny((16, 16), steps=20)
    assert model.num_steps == 20 and model.step_counts() == OFFICIAL_20
    tokens, recorded = decode_with_step_logits(model, torch.tensor([0, 1]), SamplingConfig(cfg_scale=1.0))
    assert len(recorded) == 20
    assert [positions.shape[1] for positions, _ in recorded] == OFFICIAL_20
    produced = torch.cat([positions for positions, _ in recorded], dim=1)  # (B, N) raster positions in decode order
    for row in produced:
        assert row.sort().values.equal(torch.arange(256))  # every token exactly once
    assert not produced[0].equal(produced[1])  # order=locality: each sample its own order
    for sample in range(2):
        assert torch.bincount(model.token_steps(sample), minlength=20).tolist() == OFFICIAL_20


@pytest.mark.parametrize("options, match", [
    (dict(order="zigzag"), r"model\.options\.order='zigzag' is not valid; choose one of: raster, diagonal, random, "
                           r"halton, locality$"),
    (dict(steps=20), r"model\.options\.steps=20 cannot be realised by LPD's step table on 16 tokens: choose one "
                     r"of 8, 16 \(released: 20 on 16x16\)"),
    (dict(steps=0), r"model\.options\.steps=0 cannot be realised .* choose one of 8, 16"),
    (dict(repulsion=-1), r"model\.options\.repulsion=-1 is not valid"),
])
def test_bad_options_raise_one_clear_line(options, match):
    with pytest.raises(NarBenchError, match=match) as err:
        tiny((4, 4), **options)
    assert "\n" not in str(err.value)


def test_unrealisable_steps_on_16x16_name_the_table():
    with pytest.raises(NarBenchError, match=r"steps=21 .* on 256 tokens: choose one of 8, 12, 16, 20, 24, 32, 64, "
                                            r"128, 256"):
        tiny((16, 16), steps=21)
    cfg = load_config(None, ["model.paradigm=lpd", "model.options.order=zigzag"])
    with pytest.raises(NarBenchError, match="order='zigzag' is not valid"):
        paradigm_options(cfg.model)


def test_fixed_orders_have_a_schedule_locality_and_random_have_none():
    assert [s.tolist() for s in tiny(order="raster").schedule()] == [[0], [1], [2], [3, 4], [5, 6, 7], [8, 9],
                                                                    [10, 11, 12], [13, 14, 15]]
    halton = torch.cat(tiny(order="halton").schedule())
    # Halton points (1/2, 1/3), (1/4, 2/3), (3/4, 1/9), (1/8, 4/9) -> cells (2, 1), (1, 2), (3, 0), (0, 1)
    assert halton.sort().values.equal(torch.arange(16)) and halton[:4].tolist() == [9, 6, 12, 1]
    for order in ("locality", "random"):
        with pytest.raises(NarBenchError, match="no fixed raster schedule"):
            tiny(order=order).schedule()


@pytest.mark.parametrize("order", ["locality", "random", "raster", "halton", "diagonal"])
@pytest.mark.parametrize("steps", [16, 8])
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0], ids=["cfg_off", "cfg_on"])
def test_cached_decoding_equals_teacher_forced_forward(order, steps, cfg_scale):
    """The shared contract (``decode_forward_gap``): each step's cached logits == the training forward
    under the same order and schedule (conditional and null-class rows), fp32."""
    model = tiny(order=order, steps=steps)
    gap = decode_forward_gap(model, torch.tensor([0, 3, 1]), SamplingConfig(cfg_scale=cfg_scale, top_k=8),
                             torch.Generator().manual_seed(0))
    assert gap < DECODE_ATOL


# --- the locality scheduler -----------------------------------------------------------------------------------
def official_lpd_order(group_sizes: list[int], grid: int, noise: Tensor, repulsion: int) -> list[int]:
    """``lpd_order_schedule`` (proximity threshold 1) and ``farthest_point_sampling`` re-stated with
    their randomness given: the first coord is ``noise[0]``'s argmax, and step s's ``random.shuffle``
    is the cells sorted by ``noise[s]``. Scores are rounded to 1e-9 so that the float summation order
    of 1 and 1/sqrt(2) terms does not split ties."""
    coords = [[i, j] for i in range(grid) for j in range(grid)]
    selected = [coords[int(noise[0].argmax())]]
    for step, size in enumerate(group_sizes[1:], start=1):
        candidates = []
        for coord in coords:
            if coord in selected:
                continue
            score = sum(1.0 / math.dist(coord, s) for s in selected
                        if abs(coord[0] - s[0]) <= 1 and abs(coord[1] - s[1]) <= 1)
            candidates.append([round(score, 9), coord])
        candidates.sort(key=lambda c: float(noise[step][c[1][0] * grid + c[1][1]]))  # the shuffle
        candidates.sort(key=lambda c: c[0], reverse=True)
        near = [c[1] for c in candidates if c[0] >= 1]
        far = [c[1] for c in candidates if c[0] < 1]
        taken, skipped = [], []
        while len(taken) < size and near:
            c = near.pop(0)
            if any(abs(c[0] - t[0]) <= repulsion and abs(c[1] - t[1]) <= repulsion for t in taken):
                skipped.append(c)
            else:
                taken.append(c)
        far += skipped + near
        remaining = size - len(taken)
        if remaining > 0:
            if len(far) <= remaining:
                taken += far
            else:
                points, picked = list(taken), []
                for _ in range(remaining):
                    dists = [0.0 if i in picked else min(math.dist(c, p) for p in points) for i, c in enumerate(far)]
                    i = dists.index(max(dists))
                    picked.append(i)
                    points.append(far[i])
                taken += [far[i] for i in picked]
        selected += taken
    return [i * grid + j for i, j in selected]


@pytest.mark.parametrize("grid, sizes, repulsion", [(8, [1, 2, 4, 6, 8, 10, 12, 21], 2),
                                                    (8, [1, 3, 5, 7, 9, 11, 28], 1),
                                                    (6, [1] * 36, 2), (16, OFFICIAL_20, 2)])
def test_locality_orders_equal_the_official_scheduler(grid, sizes, repulsion):
    noise = torch.rand(3, len(sizes), grid * grid, generator=torch.Generator().manual_seed(grid + repulsion))
    ours = locality_orders((grid, grid), sizes, noise, repulsion)
    for b in range(noise.shape[0]):
        assert ours[b].tolist() == official_lpd_order(sizes, grid, noise[b], repulsion)


def adjacency_stats(orders: Tensor, sizes: list[int], grid: int) -> tuple[float, float]:
    """(fraction of tokens after the first step 8-adjacent to a token of an earlier step, fraction of
    same-step token pairs that are 8-adjacent)."""
    touching, pairs, adjacent_pairs, later = 0, 0, 0, 0
    starts = [sum(sizes[:s]) for s in range(len(sizes) + 1)]
    for order in orders.tolist():
        rc = [(c // grid, c % grid) for c in order]
        for s in range(1, len(sizes)):
            before, step = rc[: starts[s]], rc[starts[s] : starts[s + 1]]
            for i, (r, c) in enumerate(step):
                later += 1
                touching += any(max(abs(r - r2), abs(c - c2)) <= 1 for r2, c2 in before)
                for r2, c2 in step[i + 1 :]:
                    pairs += 1
                    adjacent_pairs += max(abs(r - r2), abs(c - c2)) <= 1
    return touching / later, adjacent_pairs / pairs


def test_locality_order_decodes_next_to_decoded_tokens_and_spreads_each_step():
    """The scheduler's defining property on the released 16x16 / 20-step schedule: every step's first
    (highest-proximity) token touches the decoded region; in the early steps far more tokens touch
    earlier ones than under a random order, and tokens decoded together are never neighbours."""
    noise = torch.rand(8, 20, 256, generator=torch.Generator().manual_seed(0))
    orders = locality_orders((16, 16), OFFICIAL_20, noise, 2)
    starts = [sum(OFFICIAL_20[:s]) for s in range(21)]
    for order in orders:
        for s in range(1, 20):
            r, c = divmod(int(order[starts[s]]), 16)
            decoded = [divmod(int(x), 16) for x in order[: starts[s]]]
            assert any(max(abs(r - r2), abs(c - c2)) <= 1 for r2, c2 in decoded)
    # the first 8 steps (76 tokens), while the decoded region is small: locality vs a random order
    head, first = OFFICIAL_20[:8], sum(OFFICIAL_20[:8])
    touching, adjacent = adjacency_stats(orders[:, :first], head, 16)
    randoms = torch.stack([torch.randperm(256, generator=torch.Generator().manual_seed(i)) for i in range(8)])
    random_touching, random_adjacent = adjacency_stats(randoms[:, :first], head, 16)
    assert touching > 0.75 and random_touching < 0.5  # next to what is decoded (measured 0.83 vs 0.40)
    assert adjacent == 0.0 < random_adjacent  # no two neighbours in one step (repulsion 2)


def test_halton_order_covers_the_grid_with_an_even_prefix():
    order = halton_order((16, 16))
    assert order.sort().values.equal(torch.arange(256))
    blocks = [len({(int(c) // 16 // 4, int(c) % 16 // 4) for c in order[:k]}) for k in (8, 32)]
    assert blocks == [8, 16]  # the first 8 cells in 8 different 4x4 blocks, the first 32 in all 16


# --- CFG, training, size --------------------------------------------------------------------------------------
def test_cfg_ramps_per_token_from_one_to_the_scale():
    model = tiny(steps=8)  # counts 1, 1, 1, 2, 3, 2, 3, 3 -> decode indices 0 | 1 | 2 | 3 4 | 5 6 7 | ..
    assert torch.allclose(model.guidance_scale(3, 5.0).flatten(), torch.tensor([1 + 4 * 3 / 16, 1 + 4 * 4 / 16]))
    assert model.guidance_scale(0, 5.0).flatten().tolist() == [1.0]
    assert tiny(steps=8, cfg_ramp=False).guidance_scale(4, 5.0) == 5.0
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
        loss = model.loss(tokens, labels)  # a fresh random order per sample and a drawn schedule per step
        opt.zero_grad()
        loss.backward()
        assert model.mask_token.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_lpd_l_has_the_released_337m_parameters():
    """LPD-L (README: 337M; ``lpd_l``: dim 1024, depth 24, 16 heads), vocab 16384, 1000 classes, 16x16 tokens."""
    from nar_bench.paradigms.model_config import transformer_config

    cfg = load_config(None, ["model.paradigm=lpd", "model.size=L"])
    with torch.device("meta"):
        model = LPD(transformer_config(cfg.model, 16384, 1000), CodeSpace(16384, (16, 16)))
    assert count_parameters(model) == 337_157_120
    assert round(count_parameters(model) / 1e6) == 337


# --- official checkpoint layout -----------------------------------------------------------------------------
def official_forward_decoder(sd: dict[str, Tensor], tokens: Tensor, labels: Tensor, orders: Tensor,
                             group_sizes: list[int], n_head: int) -> Tensor:
    """``LPD.forward`` (eval mode, loss replaced by logits) on a state dict: ``forward_decoder`` with
    the ``generate_mask_mod`` mask, timm blocks, ``head``; logits (B, N, V) in decode order. Label
    ``C`` (one past the classes) stands for the null class, ``fake_latent``, as ``sample_tokens`` uses it."""
    bsz, n = tokens.shape
    dim = sd["token_emb.weight"].shape[1]
    classes = sd["class_emb.weight"].shape[0]
    ln = lambda x, p: F.layer_norm(x, (dim,), sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)  # noqa: E731
    table = sd["class_emb.weight"][labels.clamp(max=classes - 1)]
    cls = torch.where((labels == classes)[:, None], sd["fake_latent"], table)
    x = torch.cat([torch.zeros(bsz, 1, dim), sd["token_emb.weight"][tokens]], dim=1)
    x[:, :1] = cls[:, None]
    x = ln(x + sd["pos_embed"], "z_proj_ln")
    masked = ln(sd["mask_token"].expand(bsz, n + 1, dim) + sd["pos_embed"], "z_proj_ln")
    full = torch.cat([torch.zeros(bsz, 1, dtype=torch.long), orders + 1], dim=1)
    x = x.gather(1, full[..., None].expand(-1, -1, dim))
    masked = masked.gather(1, full[..., None].expand(-1, -1, dim))
    cum = [0, 1] + [1 + sum(group_sizes[: i + 1]) for i in range(len(group_sizes))]
    counts = [b - a for a, b in zip(cum, cum[1:], strict=False)]
    x = torch.cat([x[:, : -counts[-1]], masked[:, counts[0] :]], dim=1)
    half = len(counts) - 1
    ids = []
    for i in range(2 * half):
        ids += [i * 2] * counts[i] if i < half else [(i - half) * 2 + 1] * counts[i - half + 1]
    ids, context_len = torch.tensor(ids), sum(counts[:-1])
    q, kv = ids[:, None], ids[None, :]
    mask = (q == kv) | ((kv < q) & (torch.arange(len(ids))[None, :] < context_len))
    head_dim = dim // n_head
    layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(layers):
        p = f"blocks.{i}."
        h = ln(x, p + "norm1")
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        qq, kk, vv = qkv.reshape(bsz, -1, 3, n_head, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask).transpose(1, 2).reshape(bsz, -1, dim)
        x = x + F.linear(a, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.gelu(F.linear(ln(x, p + "norm2"), sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
        x = x + F.linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    return F.linear(ln(x, "norm")[:, -n:], sd["head.weight"])


def random_official_state(model: LPD, seed: int) -> dict[str, Tensor]:
    """An official-layout LPD state dict (``LPD``'s key names) with random weights."""
    gen = torch.Generator().manual_seed(seed)
    return {key: torch.randn(value.shape, generator=gen) * 0.2 + (1.0 if "norm" in key and key.endswith("weight")
                                                                   or key.startswith("z_proj_ln.w") else 0.0)
            for key, value in to_official(model).items()}


def test_official_state_dict_loads_round_trips_and_matches_the_official_forward():
    model = tiny((4, 4)).eval()
    state = random_official_state(model, seed=3)
    assert {k for k in state if not k.startswith("blocks.")} == {
        "class_emb.weight", "token_emb.weight", "fake_latent", "pos_embed", "z_proj_ln.weight", "z_proj_ln.bias",
        "mask_token", "norm.weight", "norm.bias", "head.weight"}
    assert {k.split(".", 2)[2] for k in state if k.startswith("blocks.0.")} == {
        "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
        "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"}
    assert state["pos_embed"].shape == (1, 17, 32) and state["mask_token"].shape == (1, 1, 32)
    load_official(model, {"model": state, "epoch": torch.tensor(400)})
    back = to_official(model)
    assert set(back) == set(state) and all(back[k].equal(v) for k, v in state.items())

    tokens, labels = torch.randint(0, VOCAB, (3, 16)), torch.tensor([0, 3, CLASSES])  # incl. the null class
    orders = torch.stack([torch.randperm(16) for _ in range(3)])
    for sizes in (model.step_counts(), [1] * 16):
        with torch.no_grad():
            ours = model.ordered_forward(tokens, labels, orders, sizes)  # raster order
            official = official_forward_decoder(state, tokens, labels, orders, sizes, n_head=2)  # decode order
        torch.testing.assert_close(ours.gather(1, orders[..., None].expand(-1, -1, VOCAB)), official,
                                   atol=1e-5, rtol=0)


def test_official_checkpoint_mismatches_name_the_keys(tmp_path):
    model = tiny((4, 4))
    state = random_official_state(model, seed=1)
    del state["mask_token"]
    state["pos_embed"] = torch.zeros(1, 257, 32)
    torch.save({"model": state}, tmp_path / "lpd_l_256.pth")
    with pytest.raises(NarBenchError, match=r"missing keys \(1\): mask_token.*"
                                            r"pos_embed \(1, 257, 32\) vs \(1, 17, 32\) \(token grid differs"):
        load_official(model, tmp_path / "lpd_l_256.pth")


def test_module_names_match_the_official_blocks():
    model = tiny()
    block = model.blocks[0]
    assert isinstance(block.norm1, nn.LayerNorm) and block.norm1.eps == 1e-6 and block.attn.qkv.bias is not None
    assert model.head.bias is None and block.mlp.fc1.out_features == 4 * 32


def test_an_lpd_file_is_named_as_lpd_when_it_does_not_fit():
    from nar_bench.paradigms.raster_ar import RasterAR

    state = random_official_state(tiny((4, 4)), seed=2)
    lpd_file = r"looks like an LPD model \(position queries: use model\.paradigm=lpd\) of model\.size=custom "
    with pytest.raises(NarBenchError, match=lpd_file + r".*dim 32, 2 layers, vocab 16, 4 classes, 4x4 tokens"):
        load_official(RasterAR(*on_grid(tiny().model_cfg, (4, 4))), state)
    with pytest.raises(NarBenchError, match=r"shape \(file vs config\): pos_embed \(1, 17, 32\) vs \(1, 65, 32\).*"
                                            r"looks like an LPD model .*4x4 tokens"):
        load_official(tiny((8, 8)), state)
