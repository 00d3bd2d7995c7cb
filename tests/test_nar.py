"""NAR paradigm: schedule, proximity mask (2D and 3D), head targets, overlap / single-head
ablations, cached parallel decoding vs the teacher-forced forward."""

import itertools

import pytest
import torch

from nar_bench.config import load_config
from nar_bench.errors import NarBenchError
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.nn.transformer import TransformerConfig, count_parameters
from nar_bench.paradigms.contract import decode_forward_gap
from nar_bench.paradigms.model_config import DROPOUTS, paradigm_options
from nar_bench.paradigms.nar import NAR, NAROptions, neighbor_schedule, proximity_mask
from nar_bench.paradigms.nar_video import VideoNAR
from nar_bench.paradigms.raster_ar import RasterAR
from tests.conftest import on_grid, randomize_heads, train_steps

VOCAB, CLASSES = 32, 5
# Decode steps see the KV cache without a mask, forward uses the mask on the full sequence: the
# two differ by fp32 round-off only.
DECODE_ATOL = 1e-5
NO_CFG = SamplingConfig(cfg_scale=1.0)
CFG = SamplingConfig(cfg_scale=3.0, cfg_interval=4, temperature=0.9, top_k=8, top_p=0.9)


def tiny_config(cls_token_num: int = 1) -> TransformerConfig:
    return TransformerConfig(dim=64, n_layers=2, n_heads=4, vocab_size=VOCAB, num_classes=CLASSES,
                             cls_token_num=cls_token_num)


def make_nar(grid=(3, 5), seed=0, **options) -> NAR:
    torch.manual_seed(seed)
    return randomize_heads(NAR(*on_grid(tiny_config(), grid), NAROptions(**options)), std=0.2).eval()


def sample_batch(grid, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    return torch.randint(0, VOCAB, (batch, n), generator=g), torch.randint(0, CLASSES, (batch,), generator=g)


def region(grid):
    """(N,) rows h and columns w of the raster tokens."""
    n = torch.arange(grid[0] * grid[1])
    return n // grid[1], n % grid[1]


# --- schedule and mask --------------------------------------------------------------------------
@pytest.mark.parametrize("grid, steps", [((16, 16), 31), ((8, 8), 15), ((4, 4), 7), ((3, 5), 7), ((6, 2), 7),
                                         ((1, 4), 4), ((5, 1), 5)])
def test_neighbor_schedule_is_anti_diagonals(grid, steps):
    schedule = neighbor_schedule(grid)
    assert len(schedule) == steps == grid[0] + grid[1] - 1
    assert torch.equal(torch.cat(schedule).sort().values, torch.arange(grid[0] * grid[1]))
    h, w = region(grid)
    for k, idx in enumerate(schedule):
        assert ((h[idx] + w[idx]) == k).all()
        assert (idx.diff() > 0).all()  # raster order inside a step
    assert NAR(*on_grid(tiny_config(), grid)).num_steps == steps


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (6, 2), (2, 3, 3), (3, 2, 2)])  # images and videos
@pytest.mark.parametrize("cls_n", [1, 2])
def test_proximity_mask_allows_exactly_nearer_or_equal_distance(grid, cls_n):
    mask = proximity_mask(grid, cls_n)
    dist = [sum(c) for c in itertools.product(*map(range, grid))]  # raster order
    n = len(dist)
    assert mask.shape == (cls_n + n, cls_n + n)
    for q, k in itertools.product(range(cls_n + n), repeat=2):
        if k < cls_n:  # condition: causal among condition tokens, visible to every token
            allowed = q >= k
        elif q < cls_n:  # condition tokens never see image tokens
            allowed = False
        else:
            allowed = dist[k - cls_n] <= dist[q - cls_n]
        assert mask[q, k].item() == allowed, (q, k)
    # head_dim 24: divisible by 2 * axes for 2D and 3D RoPE
    cfg = TransformerConfig(dim=48, n_layers=2, n_heads=2, vocab_size=VOCAB, num_classes=CLASSES, cls_token_num=cls_n)
    model = (NAR if len(grid) == 2 else VideoNAR)(*on_grid(cfg, grid))
    assert torch.equal(model.mask, mask)


# --- heads and training targets -----------------------------------------------------------------
def head_logits(model: NAR, tokens, labels):
    """Both heads' logits (B, cls + N, V) at every sequence position, computed directly."""
    h = model.hidden_states(tokens, labels)
    v = model.head_input("vertical", h, model.rope, model.mask)
    return model.backbone.head(h), model.head_output("vertical", v)


@pytest.mark.parametrize("heads", ["dimension", "single"])
@pytest.mark.parametrize("overlap", ["mixed", "horizontal", "vertical"])
@torch.no_grad()
def test_training_targets_follow_reference(heads, overlap):
    grid = (3, 4)
    model = make_nar(grid, heads=heads, overlap_head=overlap)
    tokens, labels = sample_batch(grid)
    horizontal, vertical = head_logits(model, tokens, labels)
    logits = model(tokens, labels)
    assert logits.shape == (2, 12, VOCAB)
    W = grid[1]
    for n in range(12):
        r, c = divmod(n, W)
        left, up = 1 + n - 1, 1 + n - W  # sequence positions (one condition token first)
        if r == 0 and c == 0:
            want = 0.5 * horizontal[:, 0] + 0.5 * vertical[:, 0]
        elif r == 0:
            want = horizontal[:, left]
        elif c == 0:
            want = vertical[:, up]
        else:
            want = {"mixed": 0.5 * horizontal[:, left] + 0.5 * vertical[:, up],
                    "horizontal": horizontal[:, left], "vertical": vertical[:, up]}[overlap]
        torch.testing.assert_close(logits[:, n], want, atol=1e-5, rtol=0)
    if heads == "single":  # one shared head: the vertical "head" is the backbone head
        torch.testing.assert_close(vertical, horizontal, atol=0, rtol=0)


@pytest.mark.parametrize("heads", ["dimension", "single"])
@torch.no_grad()
def test_overlap_head_changes_only_interior_logits(heads):
    grid = (4, 5)
    tokens, labels = sample_batch(grid)
    mixed = make_nar(grid, heads=heads)
    logits = {}
    for overlap in ("mixed", "horizontal", "vertical"):
        model = make_nar(grid, seed=5, heads=heads, overlap_head=overlap)
        model.load_state_dict(mixed.state_dict())
        logits[overlap] = model(tokens, labels)
    h, w = region(grid)
    interior = (h > 0) & (w > 0)
    for overlap in ("horizontal", "vertical"):
        assert torch.equal(logits[overlap][:, ~interior], logits["mixed"][:, ~interior])
        gap = (logits[overlap][:, interior] - logits["mixed"][:, interior]).abs().amax(-1)
        assert (gap > 1e-3).all(), f"every interior token must change with overlap_head={overlap}"
    torch.testing.assert_close(logits["mixed"][:, interior],
                               0.5 * (logits["horizontal"][:, interior] + logits["vertical"][:, interior]),
                               atol=1e-5, rtol=0)


def test_vertical_head_is_one_block_and_zero_initialised_output():
    model = NAR(*on_grid(tiny_config(), (4, 4)))
    single = NAR(*on_grid(tiny_config(), (4, 4)), NAROptions(heads="single"))
    block = sum(p.numel() for p in model.vertical_block.parameters())
    extra = block + model.vertical_norm.weight.numel() + model.vertical_output.weight.numel()
    assert count_parameters(model) - count_parameters(single) == extra
    assert count_parameters(single) == count_parameters(RasterAR(*on_grid(tiny_config(), (4, 4))))
    assert block == sum(p.numel() for p in model.backbone.layers[0].parameters())
    assert not model.vertical_output.weight.any()


@pytest.mark.parametrize("paradigm, size", [(NAR, 130.6e6), (RasterAR, 110.9e6)])
def test_parameter_count_base_size(paradigm, size):
    config = TransformerConfig(dim=768, n_layers=12, n_heads=12, vocab_size=16384, num_classes=1000)
    with torch.device("meta"):
        model = paradigm(*on_grid(config, (16, 16)))
    assert abs(count_parameters(model) - size) <= 0.5e6


@pytest.mark.parametrize("heads", ["dimension", "single"])
def test_training_reduces_loss_and_reaches_every_head(heads):
    grid = (3, 3)
    model = make_nar(grid, heads=heads).train()
    losses = train_steps(model, *sample_batch(grid), steps=8)
    assert losses[-1] < losses[0] - 0.5


# --- parallel decoding ---------------------------------------------------------------------------
@pytest.mark.parametrize("heads", ["dimension", "single"])
@pytest.mark.parametrize("overlap", ["mixed", "horizontal", "vertical"])
@pytest.mark.parametrize("sampling", [NO_CFG, CFG], ids=["cfg_off", "cfg_on"])
def test_cached_parallel_decoding_matches_masked_forward(heads, overlap, sampling):
    model = make_nar((3, 5), heads=heads, overlap_head=overlap)
    labels = torch.tensor([0, 3, 4])
    gap = decode_forward_gap(model, labels, sampling, torch.Generator().manual_seed(0))
    assert gap < DECODE_ATOL


@pytest.mark.parametrize("grid", [(4, 4), (5, 2)])
def test_one_forward_and_one_batched_sample_per_anti_diagonal(grid):
    model = make_nar(grid)
    fed_sizes, step_shapes = [], []
    feed, step_logits = model.feed, model.step_logits
    model.feed = lambda x, rope, cache_start: fed_sizes.append(x.shape[1]) or feed(x, rope, cache_start)
    model.step_logits = lambda s, fed: step_shapes.append(tuple(step_logits(s, fed).shape)) or step_logits(s, fed)
    out = model.generate(torch.tensor([1, 2]), CFG, torch.Generator().manual_seed(0))
    sizes = [len(idx) for idx in neighbor_schedule(grid)]
    assert out.shape == (2, *grid) and out.min() >= 0 and out.max() < VOCAB
    assert fed_sizes == [1] + sizes[:-1]  # condition prefill, then each anti-diagonal once
    assert step_shapes == [(4, n, VOCAB) for n in sizes]  # CFG doubles the batch


def test_generation_is_reproducible_and_follows_the_label():
    model = make_nar((4, 4))
    runs = [model.generate(torch.tensor([1, 2]), CFG, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(*runs)
    greedy = SamplingConfig(cfg_scale=1.0, temperature=0)
    assert not torch.equal(model.generate(torch.tensor([1]), greedy), model.generate(torch.tensor([2]), greedy))


# --- options ---------------------------------------------------------------------------------------
def test_options_are_validated():
    with pytest.raises(NarBenchError, match="heads"):
        NAROptions(heads="triple")
    with pytest.raises(NarBenchError, match="mixed, horizontal, vertical"):
        paradigm_options(load_config(overrides=["model.paradigm=nar", "model.options.overlap_head=diagonal"]).model)
    with pytest.raises(NarBenchError, match="valid options: heads, overlap_head"):
        paradigm_options(load_config(overrides=["model.paradigm=nar", "model.options.head=single"]).model)
    cfg = load_config(overrides=["model.paradigm=nar", "model.options.heads=single",
                                 "model.options.overlap_head=vertical"])
    assert paradigm_options(cfg.model) == NAROptions(heads="single", overlap_head="vertical")


def test_grid_must_be_two_dimensional():
    with pytest.raises(NarBenchError, match="2D"):
        NAR(*on_grid(tiny_config(), (2, 3, 4)))



def test_test_kit_and_released_dropout_recipe():
    """The registry-wide tests run on ``NAR.tiny()``; here its step count is pinned. Unset dropouts (token,
    resid, ffn, class) are the released recipe: LlamaGen's GPT, which NAR trains on: 0.1 on tokens, residuals,
    FFN and labels."""
    assert NAR.tiny()[0].num_steps == 7  # 4 x 4 grid: 4 + 4 - 1 anti-diagonals
    assert tuple(NAR.default_dropouts[key] for key in DROPOUTS) == (0.1, 0.1, 0.1, 0.1)
