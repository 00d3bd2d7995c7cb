"""NAR on video as the authors built it (NAR-videos LARP_AR): schedule, proximity mask, head
sources and mixed weights over the eight t/h/w regions, the stacked head taps, absolute position
embeddings, cached decoding vs the masked forward, NAR-L / NAR-LP sizes; moving-shapes clips, the
video palette tokenizer and video training."""

import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image

from nar_bench.config import load_config
from nar_bench.data.moving_shapes import DIRECTIONS, NUM_CLASSES, MovingShapesDataset, class_name
from nar_bench.errors import NarBenchError
from nar_bench.images import save_samples
from nar_bench.lit.data import GeneratorDataModule
from nar_bench.lit.module import GeneratorModule
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.nn.transformer import MODEL_SIZES, TransformerConfig, count_parameters, sincos_table
from nar_bench.paradigms.contract import decode_forward_gap
from nar_bench.paradigms.model_config import DROPOUTS
from nar_bench.paradigms.nar import NAR, neighbor_schedule
from nar_bench.paradigms.nar_video import VideoNAR, VideoNAROptions
from nar_bench.registry import DATASETS
from nar_bench.tokenizers.palette import PaletteTokenizer
from tests.conftest import on_grid, randomize_heads, train_steps

VOCAB, CLASSES = 32, 5
DECODE_ATOL = 1e-5  # cached steps attend without a mask, forward with it: fp32 round-off only
NO_CFG = SamplingConfig(cfg_scale=1.0)
CFG = SamplingConfig(cfg_scale=3.0, cfg_interval=3, temperature=0.9, top_k=8)


def video_config(n_layers: int = 2, cls_token_num: int = 1) -> TransformerConfig:
    # head_dim 8: no RoPE, so nothing needs to divide by the number of axes
    return TransformerConfig(dim=32, n_layers=n_layers, n_heads=4, vocab_size=VOCAB, num_classes=CLASSES,
                             cls_token_num=cls_token_num)


def make_video_nar(grid=(2, 3, 3), seed=0, n_layers=2, **options) -> VideoNAR:
    torch.manual_seed(seed)
    return randomize_heads(VideoNAR(*on_grid(video_config(n_layers), grid), VideoNAROptions(**options)), std=0.2).eval()


def coords(grid):
    """(N, 3) t, h, w of the raster tokens."""
    return torch.tensor(list(itertools.product(*map(range, grid))))


def sample_batch(grid, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    n = int(np.prod(grid))
    return torch.randint(0, VOCAB, (batch, n), generator=g), torch.randint(0, CLASSES, (batch,), generator=g)


# --- schedule and mask --------------------------------------------------------------------------
@pytest.mark.parametrize("grid, steps", [((4, 16, 16), 34), ((4, 8, 8), 18), ((16, 16, 16), 46), ((2, 3, 5), 8),
                                         ((1, 4, 4), 7), ((3, 1, 1), 3), ((5, 2, 1), 6)])
def test_video_schedule_is_t_plus_h_plus_w(grid, steps):
    schedule = neighbor_schedule(grid)
    assert len(schedule) == steps == sum(grid) - 2
    assert torch.equal(torch.cat(schedule).sort().values, torch.arange(int(np.prod(grid))))
    distance = coords(grid).sum(1)
    for k, idx in enumerate(schedule):
        assert (distance[idx] == k).all() and (idx.diff() > 0).all()


def test_video_paradigm_reports_34_steps_for_the_released_4x16x16_grid():
    assert VideoNAR(*on_grid(video_config(), (4, 16, 16))).num_steps == 34


# --- heads: sources, mixed weights, taps -----------------------------------------------------------
# The official rule per region (which of t, h, w are > 0) -> heads averaged (right = from the left
# token, down = from the token above, back = from the previous frame's token).
REGION_HEADS = {
    (False, False, False): ("right", "down", "back"),  # the start token, from the condition token
    (False, False, True): ("right",),
    (False, True, False): ("down",),
    (True, False, False): ("back",),
    (False, True, True): ("right", "down"),
    (True, False, True): ("right", "back"),
    (True, True, False): ("down", "back"),
    (True, True, True): ("right", "down", "back"),
}


def head_logits(model: VideoNAR, tokens, labels) -> dict[str, torch.Tensor]:
    """Each head's logits (B, cls + N, V) at every sequence position, computed directly."""
    taps = model.run_stack(model.backbone.embed(tokens, labels), model.mask)
    return {name: torch.nn.functional.linear(norm(x), weight)
            for name, x, (norm, weight) in zip(("right", "down", "back"), taps, model.head_projections(), strict=True)}


@pytest.mark.parametrize("region", list(REGION_HEADS), ids=lambda r: "t{}h{}w{}".format(*map(int, r)))
@torch.no_grad()
def test_each_region_takes_the_mean_of_the_heads_that_reach_it(region):
    grid = (2, 3, 3)
    T, H, W = grid
    model = make_video_nar(grid)
    t, h, w = (1 if region[0] else 0), (2 if region[1] else 0), (1 if region[2] else 0)
    n = (t * H + h) * W + w
    heads = REGION_HEADS[region]
    source = {"right": n - 1, "down": n - W, "back": n - H * W}  # raster index of the neighbour
    # weights and sources as buffers: sequence positions (one condition token first)
    want_weight = torch.tensor([1 / len(heads) if name in heads else 0.0 for name in ("right", "down", "back")])
    torch.testing.assert_close(model.head_weight[n], want_weight)
    for j, name in enumerate(("right", "down", "back")):
        if name in heads:
            assert model.head_src[n, j] == (0 if n == 0 else 1 + source[name])
    # and the logits themselves
    tokens, labels = sample_batch(grid)
    outputs = head_logits(model, tokens, labels)
    want = torch.stack([outputs[name][:, 0 if n == 0 else 1 + source[name]] for name in heads]).mean(0)
    torch.testing.assert_close(model(tokens, labels)[:, n], want, atol=1e-5, rtol=0)


@torch.no_grad()
def test_every_token_follows_the_official_region_rule():
    grid = (3, 2, 3)
    model = make_video_nar(grid, seed=2)
    tokens, labels = sample_batch(grid)
    outputs = head_logits(model, tokens, labels)
    logits = model(tokens, labels)
    T, H, W = grid
    assert logits.shape == (2, T * H * W, VOCAB)
    for n, (t, h, w) in enumerate(coords(grid).tolist()):
        heads = REGION_HEADS[(t > 0, h > 0, w > 0)]
        pos = {"right": n, "down": n + 1 - W, "back": n + 1 - H * W} if n else dict.fromkeys(heads, 0)
        want = torch.stack([outputs[name][:, pos[name]] for name in heads]).mean(0)
        torch.testing.assert_close(logits[:, n], want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("down_blocks, back_blocks", [(1, 1), (2, 1), (0, 2), (1, 0)])
@torch.no_grad()
def test_heads_read_the_stack_after_l_then_down_then_back_blocks(down_blocks, back_blocks):
    model = make_video_nar(n_layers=2, down_blocks=down_blocks, back_blocks=back_blocks)
    assert len(model.backbone.layers) == 2 + down_blocks + back_blocks
    tokens, labels = sample_batch(model.grid)
    x = model.backbone.embed(tokens, labels)
    states = [x]
    for layer in model.backbone.layers:
        states.append(layer(states[-1], None, model.mask))
    right, down, back = model.run_stack(x, model.mask)
    assert torch.equal(right, states[2]) and torch.equal(down, states[2 + down_blocks])
    assert torch.equal(back, states[-1])


def test_three_zero_initialised_heads_and_no_rope():
    cfg = TransformerConfig(dim=64, n_layers=1, n_heads=4, vocab_size=VOCAB, num_classes=CLASSES)
    model = VideoNAR(*on_grid(cfg, (2, 2, 2)))  # head_dim 16: the 3D-RoPE model refused it (16 % 6 != 0)
    assert model.rope is None
    for output in (model.backbone.output, model.down_output, model.back_output):
        assert output.weight.shape == (VOCAB, 64) and not output.weight.any()
    extra = {k for k in model.state_dict() if not k.startswith("backbone.")}
    assert extra == {f"{name}_{part}.weight" for name in ("down", "back") for part in ("norm", "output")}


# --- absolute position embedding -------------------------------------------------------------------
def test_learned_table_covers_condition_plus_raster_sequence():
    model = VideoNAR(*on_grid(video_config(cls_token_num=2), (2, 3, 3)))
    table = model.backbone.pos_embedding
    assert isinstance(table, torch.nn.Parameter) and table.shape == (1, 2 + 18, 32)
    assert 0.01 < table.std().item() < 0.03  # the official init: randn * 0.02


def test_sincos_table_is_the_fixed_1d_embedding_and_is_saved():
    model = VideoNAR(*on_grid(video_config(), (2, 3, 3)), VideoNAROptions(position_embedding="sincos"))
    table = model.backbone.pos_embedding
    assert not isinstance(table, torch.nn.Parameter) and "backbone.pos_embedding" in model.state_dict()
    p, i = torch.arange(19.0)[:, None], torch.arange(16.0)
    freqs = 1 / 10000 ** (i / 16)
    torch.testing.assert_close(table[0], torch.cat([(p * freqs).sin(), (p * freqs).cos()], 1))
    torch.testing.assert_close(sincos_table(19, 32), table[0])


@torch.no_grad()
def test_position_rows_are_added_per_raster_position():
    model = make_video_nar()
    tokens, labels = sample_batch(model.grid)
    base = model(tokens, labels)
    model.backbone.pos_embedding[0, 1 + 5].add_(1.0)  # the row of raster token 5 only
    changed = (model(tokens, labels) - base).abs().amax((0, 2)) > 1e-6
    assert not changed[:5].any() and changed[5:].any()  # earlier tokens never see token 5's row


def test_bad_options_and_grids_name_the_fix():
    with pytest.raises(NarBenchError, match="position_embedding='rope'.*learned, sincos"):
        VideoNAROptions(position_embedding="rope")
    with pytest.raises(NarBenchError, match="3D token grids.*use model.paradigm=nar$"):
        VideoNAR(*on_grid(video_config(), (4, 4)))
    with pytest.raises(NarBenchError, match="use model.paradigm=nar_video"):
        cfg = TransformerConfig(dim=48, n_layers=1, n_heads=2, vocab_size=VOCAB, num_classes=CLASSES)
        NAR(*on_grid(cfg, (2, 4, 4)))


# --- training and parallel decoding -------------------------------------------------------------
@pytest.mark.parametrize("position_embedding", ["learned", "sincos"])
def test_training_reduces_loss_and_reaches_every_parameter(position_embedding):
    grid = (2, 2, 2)
    model = make_video_nar(grid, position_embedding=position_embedding).train()
    losses = train_steps(model, *sample_batch(grid), steps=8)
    assert losses[-1] < losses[0] - 0.5


@pytest.mark.parametrize("options", [{}, {"position_embedding": "sincos"}, {"down_blocks": 2, "back_blocks": 0}],
                         ids=["learned", "sincos", "2+0"])
@pytest.mark.parametrize("sampling", [NO_CFG, CFG], ids=["cfg_off", "cfg_on"])
def test_cached_decoding_matches_masked_forward(options, sampling):
    model = make_video_nar((2, 3, 3), **options)
    gap = decode_forward_gap(model, torch.tensor([0, 4]), sampling, torch.Generator().manual_seed(0))
    assert gap < DECODE_ATOL


def test_cached_decoding_matches_forward_with_two_condition_tokens():
    torch.manual_seed(0)
    model = randomize_heads(VideoNAR(*on_grid(video_config(cls_token_num=2), (2, 2, 3))), std=0.2).eval()
    assert decode_forward_gap(model, torch.tensor([1, 3]), CFG, torch.Generator().manual_seed(1)) < DECODE_ATOL


def test_one_forward_per_step_and_output_layout():
    grid = (2, 3, 3)
    model = make_video_nar(grid)
    fed_sizes = []
    feed = model.feed
    model.feed = lambda x, rope, cache_start: fed_sizes.append(x.shape[1]) or feed(x, rope, cache_start)
    out = model.generate(torch.tensor([1, 2]), CFG, torch.Generator().manual_seed(0))
    assert out.shape == (2, *grid) and out.min() >= 0 and out.max() < VOCAB
    assert fed_sizes == [1] + [len(idx) for idx in neighbor_schedule(grid)][:-1]


# --- paper sizes --------------------------------------------------------------------------------
def paper_video_nar(size: str) -> VideoNAR:
    dim, n_layers, n_heads = MODEL_SIZES[size]
    with torch.device("meta"):
        cfg = TransformerConfig(dim=dim, n_layers=n_layers, n_heads=n_heads, vocab_size=8192, num_classes=101)
        return VideoNAR(*on_grid(cfg, (4, 16, 16)))


def expected_parameters(dim: int, n_layers: int, vocab: int = 8192, classes: int = 101, positions: int = 1025) -> int:
    """LARP_AR's count written out: n_layers + 2 LLaMA blocks (qkv + out projection, SwiGLU, two
    norms), token and class tables, the learned position table and three norm + output heads."""
    hidden = math.ceil(int(8 * dim / 3) / 256) * 256
    block = 4 * dim * dim + 3 * dim * hidden + 2 * dim
    return (n_layers + 2) * block + vocab * dim + (classes + 1) * dim + positions * dim + 3 * (dim + vocab * dim)


@pytest.mark.parametrize("size, millions", [("L", 369), ("LP", 694)])  # paper: NAR-L 369M, NAR-LP 694M
def test_nar_l_and_lp_video_parameter_counts(size, millions):
    model = paper_video_nar(size)
    dim, n_layers, _ = MODEL_SIZES[size]
    count = count_parameters(model)
    assert count == expected_parameters(dim, n_layers)
    assert round(count / 1e6) == millions
    assert model.num_steps == 34 and len(model.backbone.layers) == n_layers + 2


# --- data, tokenizer, training ------------------------------------------------------------------
def test_moving_shapes_is_deterministic_by_seed_and_split_and_class_balanced():
    a, b = MovingShapesDataset(32, seed=3), MovingShapesDataset(32, seed=3)
    assert all(torch.equal(a[i][0], b[i][0]) for i in (0, 7, 31))
    assert not torch.equal(MovingShapesDataset(32, seed=4)[7][0], a[7][0])
    assert not torch.equal(MovingShapesDataset(32, seed=3, split="val")[7][0], a[7][0])
    clip, label = a[17]
    assert clip.shape == (3, 4, 32, 32) and clip.min() >= -1 and clip.max() <= 1 and label == 17 % NUM_CLASSES
    assert torch.bincount(torch.tensor([a[i][1] for i in range(32)])).tolist() == [2] * NUM_CLASSES


@pytest.mark.parametrize("label", range(NUM_CLASSES))
def test_the_shape_moves_in_its_class_direction(label):
    ds = MovingShapesDataset(NUM_CLASSES, frames=4, grid=16, image_size=16, seed=1)
    codes, _ = ds.codes(label)
    ys, xs = np.mgrid[0:16, 0:16]
    shape = codes >= 4  # palette rows 0-3 are background tones
    centre = np.array([[ys[f].mean(), xs[f].mean()] for f in shape])  # (T, 2) per frame
    dy, dx = DIRECTIONS[class_name(label).split()[-1]]
    assert (np.sign(np.diff(centre[:, 0])) == dy).all() or dy == 0
    assert (np.sign(np.diff(centre[:, 1])) == dx).all() or dx == 0
    assert np.abs(centre[-1] - centre[0]).sum() >= 2  # visibly moves, not a jitter


def test_video_palette_tokenizer_round_trip_is_lossless():
    ds, tok = MovingShapesDataset(8, frames=3, image_size=32, grid=8), PaletteTokenizer(32, 8, frames=3)
    clips = torch.stack([ds[i][0] for i in range(8)])
    codes = tok.encode(clips)
    assert tok.grid == (3, 8, 8) and codes.shape == (8, 3 * 64) and codes.max() < tok.vocab_size
    assert torch.equal(tok.decode(codes), clips)
    assert torch.equal(tok.decode(codes.view(8, 3, 8, 8)), clips)
    assert torch.equal(codes.view(8, 3, 64)[:, 1], PaletteTokenizer(32, 8).encode(clips[:, :, 1]))  # frame by frame
    with pytest.raises(ValueError, match="expected 5D input"):
        tok.encode(clips[:, :, 0])


def test_dataset_and_frames_must_agree():
    with pytest.raises(NarBenchError, match="set data.frames"):
        DATASETS["moving_shapes"](load_config(overrides=["data.name=moving_shapes"]).data, "train")
    with pytest.raises(NarBenchError, match="use data.name=moving_shapes"):
        DATASETS["shapes"](load_config(overrides=["data.frames=4"]).data, "train")


def test_video_experiment_trains_and_samples_gif_clips(tmp_path):
    cfg = load_config("experiments/video_nar.yaml", ["data.frames=2", "data.image_size=8", "data.grid_size=4",
                                                      "data.batch_size=4", "model.n_layers=1"])
    data = GeneratorDataModule(cfg.data)
    module = GeneratorModule(cfg, data.num_classes)
    assert module.paradigm.name == "nar_video" and module.paradigm.num_steps == 2 + 4 + 4 - 2
    clips, labels = next(iter(data.train_dataloader()))
    assert clips.shape == (4, 3, 2, 8, 8)
    loss = module.training_step((clips, labels), 0)
    loss.backward()
    assert torch.isfinite(loss) and module.paradigm.back_output.weight.grad.abs().sum() > 0
    samples = module.sample_images(torch.tensor([0, 5, 9]))
    assert samples.shape == (3, 3, 2, 8, 8) and samples.dtype == torch.uint8
    path = save_samples(samples, tmp_path / "samples.png", nrow=3)
    assert path.suffix == ".gif" and Image.open(path).n_frames == 2



def test_test_kit_and_released_dropout_recipe():
    """The registry-wide tests run on ``VideoNAR.tiny()``; here its step count is pinned. Unset dropouts
    (token, resid, ffn, class) are the released recipe: LlamaGen's GPT, which NAR-videos trains on: 0.1 on
    tokens, residuals, FFN and labels."""
    assert VideoNAR.tiny()[0].num_steps == 8  # 2 x 4 x 4 clips: T + H + W - 2
    assert tuple(VideoNAR.default_dropouts[key] for key in DROPOUTS) == (0.1, 0.1, 0.1, 0.1)
