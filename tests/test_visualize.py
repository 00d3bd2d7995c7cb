"""Generation-order GIFs: one frame per decoding step for every sequence paradigm, the highlighted
tokens are the step's, the partial image grows to the final decode; MLflow logging."""

import math

import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from nar_bench.config import load_config
from nar_bench.lit.module import GeneratorModule
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.nn.transformer import TransformerConfig
from nar_bench.paradigms.base import step_of_positions
from nar_bench.paradigms.maskgit import MaskGIT
from nar_bench.paradigms.nar_video import VideoNAR
from nar_bench.registry import PARADIGMS
from nar_bench.run.order_gifs import (
    CURRENT,
    UNDECODED_GREY,
    image_paradigms,
    log_order_gif,
    order_frames,
    order_gif,
    partial_images,
    token_panel,
    write_order_gifs,
)
from nar_bench.tokenizers.base import RASTER
from nar_bench.tokenizers.palette import PaletteTokenizer
from nar_bench.tracking.mlflow import make_logger
from tests.conftest import on_grid

TINY = TransformerConfig(dim=48, n_layers=1, n_heads=2, vocab_size=16, num_classes=4)
IMAGE_TOKENIZER = PaletteTokenizer(16, 4)
# Order GIFs draw raster codes; the paradigms' test kits (their step counts are pinned in their own tests)
RASTER_PARADIGMS = sorted(name for name, cls in PARADIGMS.items() if cls.code_layout == RASTER)
SAMPLING = SamplingConfig(cfg_scale=2.0)


@pytest.mark.parametrize("name", RASTER_PARADIGMS)
def test_order_gif_has_exactly_one_frame_per_decoding_step(name, tmp_path):
    paradigm, tokenizer = PARADIGMS[name].tiny()
    steps = paradigm.num_steps
    path = order_gif(paradigm, 2, tmp_path / f"order_{name}.gif", tokenizer=tokenizer, sampling=SAMPLING)
    with Image.open(path) as gif:
        assert gif.n_frames == steps
        sizes = set()
        for i in range(gif.n_frames):
            gif.seek(i)
            sizes.add(gif.size)
        assert len(sizes) == 1


@pytest.mark.parametrize("name", [name for name in RASTER_PARADIGMS if PARADIGMS[name].fixed_schedule])
def test_partial_images_grow_step_by_step_to_the_final_decode(name):
    paradigm, tokenizer = PARADIGMS[name].tiny()
    schedule = paradigm.schedule()
    codes = torch.randint(4, 16, (math.prod(tokenizer.grid),), generator=torch.Generator().manual_seed(0))
    images = partial_images(step_of_positions(schedule, codes.numel()), tokenizer, codes)
    full = ((tokenizer.decode(codes[None]) + 1) * 127.5).round().to(torch.uint8)[0]
    assert images.shape == (len(schedule), *full.shape)
    assert torch.equal(images[-1], full)
    patch = tokenizer.patch
    for s in (0, len(schedule) // 2):
        cells = images[s][..., ::patch, ::patch].flatten(1)  # (3, N) one pixel per token, raster order
        decoded = torch.cat(schedule[: s + 1])
        grey = (cells == UNDECODED_GREY).all(0)
        assert torch.equal(cells[:, decoded], full[..., ::patch, ::patch].flatten(1)[:, decoded])
        assert grey.sum() == codes.numel() - len(decoded) and not grey[decoded].any()


def test_token_panel_highlights_exactly_the_tokens_of_the_step():
    grid = (3, 4, 4)
    schedule = VideoNAR(*on_grid(TINY, grid)).schedule()
    step = torch.empty(48, dtype=torch.long)
    for s, idx in enumerate(schedule):
        step[idx] = s
    panel = token_panel(step, 4, grid, (16, 16))  # (3, T, 16, 16)
    highlighted = (panel[..., 1::4, 1::4].flatten(1) == torch.tensor(CURRENT)[:, None]).all(0)
    assert torch.equal(highlighted.nonzero().flatten(), schedule[4])


def test_maskgit_frames_follow_the_order_of_the_sampled_image():
    torch.manual_seed(0)
    paradigm = MaskGIT(*on_grid(TINY, (4, 4)))
    codes = paradigm.generate(torch.tensor([1]), SAMPLING, torch.Generator().manual_seed(0))[0].flatten()
    step = paradigm.token_steps()
    frames = order_frames(paradigm, IMAGE_TOKENIZER, codes)
    assert len(frames) == 8 and torch.bincount(step, minlength=8).tolist() == paradigm.step_counts()
    images = partial_images(step, IMAGE_TOKENIZER, codes)
    patch = IMAGE_TOKENIZER.patch
    for s in range(8):  # after step s exactly the tokens committed up to s are shown
        grey = (images[s][..., ::patch, ::patch].flatten(1) == UNDECODED_GREY).all(0)
        assert torch.equal(~grey, step <= s)


def test_module_order_gif_is_logged_to_mlflow(tmp_path):
    tracking = [f"tracking.tracking_uri=sqlite:///{tmp_path}/mlruns.db", f"tracking.artifact_location={tmp_path}/art",
                "tracking.experiment=test"]
    cfg = load_config("experiments/demo.yaml", ["model.paradigm=nar", "model.size=tiny", "data.image_size=16",
                                                "data.grid_size=4", "model.n_layers=1", *tracking])
    module = GeneratorModule(cfg, 16)
    logger = make_logger(cfg.tracking, "order")
    log_order_gif(module, logger, label=3)
    client = MlflowClient(cfg.tracking.tracking_uri)
    (artifact,) = client.list_artifacts(logger.run_id, "order")
    assert artifact.path == "order/order_nar.gif"
    local = client.download_artifacts(logger.run_id, artifact.path, str(tmp_path))
    assert Image.open(local).n_frames == 7


def test_write_order_gifs_defaults_to_every_image_paradigm(tmp_path):
    defaults = set(image_paradigms())
    assert {"ar", "nar", "par", "maskgit", "randar", "lpd"} <= defaults and not {"var", "nar_video"} & defaults
    tiny = ["model.size=tiny", "model.n_layers=1", "data.image_size=16", "data.grid_size=4"]
    fixed = [name for name in image_paradigms() if name not in ("randar", "lpd")]
    paths = write_order_gifs(tmp_path / "fixed", fixed, overrides=tiny)
    assert [p.name for p in paths] == [f"order_{name}.gif" for name in fixed]
    # the any-order paradigms' released step counts (88, 20) need 16x16 tokens: their tiny step counts here
    for name, steps in (("randar", 6), ("lpd", 8)):
        paths += write_order_gifs(tmp_path / name, [name], overrides=[*tiny, f"model.options.steps={steps}"])
    frames = {p.name: Image.open(p).n_frames for p in paths}
    assert [frames[f"order_{name}.gif"] for name in ("ar", "nar", "par", "maskgit", "randar", "lpd")] == [
        16, 7, 7, 8, 6, 8]


def test_order_gifs_verb_writes_one_gif_per_paradigm(tmp_path, capsys):
    from nar_bench.cli import main

    args = ["order-gifs", "model.size=tiny", "data.image_size=16", "data.grid_size=4", "--out", str(tmp_path),
            "--paradigms", "nar", "par"]
    assert main(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["order_nar.gif", "order_par.gif", "provenance.json"]
    assert Image.open(tmp_path / "order_nar.gif").n_frames == 7  # 4 + 4 - 1 anti-diagonals
