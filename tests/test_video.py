"""NAR on video (T x H x W): schedule, 3D proximity mask, temporal head targets, cached decoding vs
the masked forward; moving-shapes clips, the video palette tokenizer and video training."""

import itertools

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
from nar_bench.nn.transformer import TransformerConfig, count_parameters
from nar_bench.paradigms.contract import decode_forward_gap
from nar_bench.paradigms.nar import NAR, NAROptions, VideoNAR, neighbor_schedule
from nar_bench.registry import DATASETS
from nar_bench.tokenizers.palette import PaletteTokenizer
from tests.conftest import on_grid, randomize_heads, train_steps

VOCAB, CLASSES = 32, 5
DECODE_ATOL = 1e-5  # cached steps attend without a mask, forward with it: fp32 round-off only
NO_CFG = SamplingConfig(cfg_scale=1.0)
CFG = SamplingConfig(cfg_scale=3.0, cfg_interval=3, temperature=0.9, top_k=8)


def video_config(cls_token_num: int = 1) -> TransformerConfig:
    # 3D RoPE: head_dim = 48 / 2 = 24 is divisible by 2 * 3 axes
    return TransformerConfig(dim=48, n_layers=2, n_heads=2, vocab_size=VOCAB, num_classes=CLASSES,
                             cls_token_num=cls_token_num)


def make_video_nar(grid=(2, 3, 3), seed=0, **options) -> VideoNAR:
    torch.manual_seed(seed)
    return randomize_heads(VideoNAR(*on_grid(video_config(), grid), NAROptions(**options)), std=0.2).eval()


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


def test_video_paradigm_reports_the_step_count():
    assert VideoNAR(*on_grid(video_config(), (4, 16, 16))).num_steps == 34


# --- heads and training targets -----------------------------------------------------------------
def reference_logits(model: VideoNAR, tokens, labels, overlap: str):
    """Expected logits per raster token, written out per neighbour: horizontal head of the left
    token, vertical head of the upper token, temporal head of the previous frame's token."""
    h = model.hidden_states(tokens, labels)
    heads = {name: model.head_output(name, model.head_input(name, h, model.rope, model.mask))
             for name in ("horizontal", "vertical", "temporal")}
    T, H, W = model.grid
    want = []
    for n, (t, r, c) in enumerate(coords(model.grid).tolist()):
        pos = 1 + n  # sequence position (one condition token first)
        sources = {}
        if c > 0:
            sources["horizontal"] = heads["horizontal"][:, pos - 1]
        if r > 0:
            sources["vertical"] = heads["vertical"][:, pos - W]
        if t > 0:
            sources["temporal"] = heads["temporal"][:, pos - H * W]
        if n == 0:
            sources = {name: out[:, 0] for name, out in heads.items()}
        elif len(sources) > 1 and overlap in sources:
            sources = {overlap: sources[overlap]}
        want.append(torch.stack(list(sources.values())).mean(0))
    return torch.stack(want, 1), heads


@pytest.mark.parametrize("heads", ["dimension", "single"])
@pytest.mark.parametrize("overlap", ["mixed", "horizontal", "vertical", "temporal"])
@torch.no_grad()
def test_training_targets_come_from_the_neighbours_that_reach_each_token(heads, overlap):
    grid = (3, 2, 3)
    model = make_video_nar(grid, heads=heads, overlap_head=overlap)
    tokens, labels = sample_batch(grid)
    want, outputs = reference_logits(model, tokens, labels, overlap)
    logits = model(tokens, labels)
    assert logits.shape == (2, 18, VOCAB)
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=0)
    if heads == "single":  # one shared head serves all three directions
        torch.testing.assert_close(outputs["temporal"], outputs["horizontal"], atol=0, rtol=0)
    else:
        assert (outputs["temporal"] - outputs["vertical"]).abs().max() > 1e-3


@torch.no_grad()
def test_first_column_of_later_frames_uses_the_temporal_head_alone():
    grid = (3, 2, 3)
    model = make_video_nar(grid)
    tokens, labels = sample_batch(grid)
    h = model.hidden_states(tokens, labels)
    temporal = model.head_output("temporal", model.head_input("temporal", h, model.rope, model.mask))
    logits = model(tokens, labels)
    frame = 2 * 3
    for t in (1, 2):  # (t, 0, 0) has only one neighbour: (t-1, 0, 0)
        torch.testing.assert_close(logits[:, t * frame], temporal[:, 1 + (t - 1) * frame], atol=1e-5, rtol=0)


def test_temporal_head_is_one_block_norm_and_zero_initialised_output():
    model = VideoNAR(*on_grid(video_config(), (2, 3, 3)))
    single = VideoNAR(*on_grid(video_config(), (2, 3, 3)), NAROptions(heads="single"))
    block = sum(p.numel() for p in model.temporal_block.parameters())
    head = block + model.temporal_norm.weight.numel() + model.temporal_output.weight.numel()
    assert block == sum(p.numel() for p in model.backbone.layers[0].parameters())
    assert count_parameters(model) - count_parameters(single) == 2 * head  # vertical + temporal
    assert not model.temporal_output.weight.any()
    extra = {k.split(".")[0] for k in model.state_dict() if not k.startswith("backbone.")}
    assert extra == {f"{name}_{part}" for name in ("vertical", "temporal") for part in ("block", "norm", "output")}


def test_training_reduces_loss_and_reaches_every_head():
    grid = (2, 2, 2)
    model = make_video_nar(grid).train()
    losses = train_steps(model, *sample_batch(grid), steps=8)
    assert losses[-1] < losses[0] - 0.5


# --- parallel decoding ---------------------------------------------------------------------------
@pytest.mark.parametrize("heads, overlap", [("dimension", "mixed"), ("dimension", "temporal"),
                                            ("dimension", "horizontal"), ("single", "mixed")])
@pytest.mark.parametrize("sampling", [NO_CFG, CFG], ids=["cfg_off", "cfg_on"])
def test_cached_3d_decoding_matches_masked_forward(heads, overlap, sampling):
    model = make_video_nar((2, 3, 3), heads=heads, overlap_head=overlap)
    gap = decode_forward_gap(model, torch.tensor([0, 4]), sampling, torch.Generator().manual_seed(0))
    assert gap < DECODE_ATOL


def test_one_forward_per_step_and_output_layout():
    grid = (2, 3, 3)
    model = make_video_nar(grid)
    fed_sizes = []
    feed = model.feed
    model.feed = lambda x, rope, cache_start: fed_sizes.append(x.shape[1]) or feed(x, rope, cache_start)
    out = model.generate(torch.tensor([1, 2]), CFG, torch.Generator().manual_seed(0))
    assert out.shape == (2, *grid) and out.min() >= 0 and out.max() < VOCAB
    assert fed_sizes == [1] + [len(idx) for idx in neighbor_schedule(grid)][:-1]


# --- errors -------------------------------------------------------------------------------------
def test_grid_rank_head_dim_and_overlap_head_errors_name_the_fix():
    with pytest.raises(NarBenchError, match="3D token grids.*use model.paradigm=nar$"):
        VideoNAR(*on_grid(video_config(), (4, 4)))
    with pytest.raises(NarBenchError, match="use model.paradigm=nar_video"):
        NAR(*on_grid(video_config(), (2, 4, 4)))
    with pytest.raises(NarBenchError, match="head_dim .*= 16\\) must be divisible by 6"):
        cfg = TransformerConfig(dim=64, n_layers=1, n_heads=4, vocab_size=VOCAB, num_classes=CLASSES)
        VideoNAR(*on_grid(cfg, (2, 2, 2)))
    with pytest.raises(NarBenchError, match="overlap_head='temporal'.*mixed, horizontal, vertical"):
        NAR(*on_grid(video_config(), (3, 3)), NAROptions(overlap_head="temporal"))


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
    assert torch.isfinite(loss) and module.paradigm.temporal_output.weight.grad.abs().sum() > 0
    samples = module.sample_images(torch.tensor([0, 5, 9]))
    assert samples.shape == (3, 3, 2, 8, 8) and samples.dtype == torch.uint8
    path = save_samples(samples, tmp_path / "samples.png", nrow=3)
    assert path.suffix == ".gif" and Image.open(path).n_frames == 2
