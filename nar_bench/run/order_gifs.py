"""Generation-order visualisation: a GIF with one frame per decoding step of a paradigm.

Each frame shows two panels: the token grid, with the tokens decoded at this step
highlighted (earlier ones dark, later ones light), and the partial image so far (the code grid
decoded by the tokenizer with not-yet-decoded tokens filled by code 0, their cells greyed out).
Video grids (T, H, W) show the T frames in a row in each panel, the panels stacked. The order is the
paradigm's ``token_steps()``: its ``schedule()`` for fixed orders (ar, par, nar, nar_video), the order
the sampled image was decoded in for MaskGIT (data dependent) and RandAR / LPD (per-sample orders).

    nar-bench order-gifs                     # results/runs/order/order_<paradigm>.gif, untrained models
    nar-bench order-gifs --ckpt nar=results/runs/<run>/checkpoints/last.ckpt

A folder holding committed GIFs (results/order) is only written with ``--overwrite``; the caption of
every frame says whether the model is trained (its checkpoint) or untrained (order only).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from nar_bench.errors import NarBenchError
from nar_bench.images import save_gif, to_uint8
from nar_bench.lit.module import GeneratorModule
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.paradigms.base import Paradigm
from nar_bench.registry import PARADIGMS
from nar_bench.tokenizers.base import RASTER, Tokenizer
from nar_bench.tracking.mlflow import log_artifact

DONE, CURRENT, PENDING = (60, 90, 150), (255, 50, 150), (225, 225, 230)  # token-panel colours
UNDECODED_GREY = 128
GIF_SECONDS = 6.0  # whole animation; the last frame is held for LAST_FRAME_MS on top
LAST_FRAME_MS = 1500


def partial_images(step: Tensor, tokenizer: Tokenizer, codes: Tensor, batch_size: int = 64) -> Tensor:
    """uint8 (S, 3, *pixels) image after each of the S steps for raster codes (N,), given the (N,)
    step of each token (``step_of_positions``): the code grid with tokens of later steps set to 0,
    decoded by the tokenizer, their cells painted grey."""
    steps = int(step.max()) + 1
    step = step.to(codes.device)
    decoded = step[None, :] <= torch.arange(steps, device=codes.device)[:, None]  # (S, N)
    partial = torch.where(decoded, codes[None, :], torch.zeros_like(codes))
    with torch.no_grad():
        images = torch.cat([to_uint8(tokenizer.decode(chunk)).cpu() for chunk in partial.split(batch_size)])
    cells = cell_pixels(decoded.cpu().view(steps, *tokenizer.grid), images.shape[-2:])
    return torch.where(cells[:, None], images, torch.full_like(images, UNDECODED_GREY))


def cell_pixels(cells: Tensor, pixels: Sequence[int]) -> Tensor:
    """(..., h, w) per-token values -> (..., H, W) per-pixel, each token covering its cell."""
    h, w = cells.shape[-2:]
    return cells.repeat_interleave(pixels[0] // h, -2).repeat_interleave(pixels[1] // w, -1)


def token_panel(step: Tensor, current: int, grid: Sequence[int], pixels: Sequence[int]) -> Tensor:
    """uint8 (3, *grid[:-2], H, W): tokens of steps < ``current`` dark, == current highlighted,
    later ones light, from the (N,) step of each raster token; thin lines between cells."""
    palette = torch.tensor([DONE, CURRENT, PENDING], dtype=torch.uint8)
    kind = 1 + torch.sign(step - current).view(*grid)  # 0 done, 1 current, 2 pending
    panel = palette[cell_pixels(kind, pixels)].movedim(-1, 0)
    ch, cw = pixels[0] // grid[-2], pixels[1] // grid[-1]
    if min(ch, cw) >= 6:  # cell borders once cells are big enough to show them
        panel[..., ch - 1 :: ch, :] = panel[..., ch - 1 :: ch, :] // 2 + 100
        panel[..., :, cw - 1 :: cw] = panel[..., :, cw - 1 :: cw] // 2 + 100
    return panel


def frames_in_a_row(panel: Tensor, gap: int) -> np.ndarray:
    """uint8 (3, H, W) or video (3, T, H, W) -> (H, W', 3) array, video frames left to right."""
    if panel.dim() == 3:
        panel = panel[:, None]
    c, t, h, w = panel.shape
    row = torch.full((c, h, t * (w + gap) - gap), 255, dtype=torch.uint8)
    for i in range(t):
        row[:, :, i * (w + gap) : i * (w + gap) + w] = panel[:, i]
    return row.permute(1, 2, 0).numpy()


def order_frames(paradigm: Paradigm, tokenizer: Tokenizer, codes: Tensor, panel_size: int = 256,
                 step: Tensor | None = None, subtitle: str = "") -> list[np.ndarray]:
    """One uint8 RGB frame (H, W, 3) per decoding step of ``paradigm`` for raster codes (N,) or
    (*grid), decoded in the order ``step`` (N,) (default: ``paradigm.token_steps()``, the order of
    the latest generated sample): caption (step count; ``subtitle``, e.g. class and model), token
    panel and partial image. Image panels sit side by side, about ``panel_size`` pixels tall; video
    panels (rows of T frames, up to 3 * panel_size wide) are stacked."""
    codes = codes.flatten()
    step = paradigm.token_steps() if step is None else step
    images = partial_images(step, tokenizer, codes)
    video = images.dim() == 5
    row_width = images.shape[-1] * (images.shape[2] if video else 1)
    scale = max(1, min(panel_size // images.shape[-2], 3 * panel_size // row_width))
    images = cell_pixels(images, [side * scale for side in images.shape[-2:]])
    font = ImageFont.load_default(size=14)
    frames = []
    for s in range(paradigm.num_steps):
        tokens = token_panel(step, s, tokenizer.grid, images.shape[-2:])
        body = stack_panels([frames_in_a_row(p, gap=4) for p in (tokens, images[s])], axis=0 if video else 1)
        top = 42 if subtitle else 24
        frame = Image.new("RGB", (body.shape[1], body.shape[0] + top), "white")
        frame.paste(Image.fromarray(body), (0, top))
        done = int((step <= s).sum())
        caption = (f"{paradigm.name}  step {s + 1}/{paradigm.num_steps}  +{int((step == s).sum())} tokens  "
                   f"({done}/{codes.numel()} decoded)")
        ImageDraw.Draw(frame).text((4, 4), caption, fill=(0, 0, 0), font=font)
        if subtitle:
            ImageDraw.Draw(frame).text((4, 22), subtitle, fill=(70, 70, 70), font=ImageFont.load_default(size=11))
        frames.append(np.asarray(frame))
    return frames


def stack_panels(panels: list[np.ndarray], axis: int, gap: int = 12) -> np.ndarray:
    """(H, W, 3) arrays of equal size joined along ``axis`` (0: stacked, 1: side by side)."""
    shape = list(panels[0].shape)
    shape[axis] = gap
    spacer = np.full(shape, 255, np.uint8)
    return np.concatenate([panels[0], spacer, panels[1]], axis=axis)


def order_gif(source: GeneratorModule | Paradigm, label: int, path: str | Path, tokenizer: Tokenizer | None = None,
              sampling: SamplingConfig | None = None, seed: int = 0, subtitle: str | None = None) -> Path:
    """Samples one image (or clip) of class ``label`` and writes its generation order as a GIF
    with exactly one frame per decoding step. ``source`` is a GeneratorModule (its tokenizer and
    ``eval.sampling`` are used) or a paradigm together with ``tokenizer`` (``sampling`` defaults
    to ``SamplingConfig()``). Returns the GIF path."""
    if isinstance(source, GeneratorModule):
        paradigm, tokenizer, sampling = source.paradigm, source.tokenizer, sampling or source.sampling
    elif tokenizer is None:
        raise TypeError("order_gif(paradigm, ...) needs the tokenizer that decodes its codes")
    else:
        paradigm, sampling = source, sampling or SamplingConfig()
    if paradigm.codes.layout != RASTER:
        raise NarBenchError(f"generation-order GIFs draw a raster code grid; paradigm '{paradigm.name}' makes "
                            f"{paradigm.codes.layout} codes")
    device = next(paradigm.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    codes = paradigm.generate(torch.tensor([label], device=device), sampling, generator)[0]
    frames = order_frames(paradigm, tokenizer, codes, subtitle=f"class {label}" if subtitle is None else subtitle)
    step_ms = int(np.clip(GIF_SECONDS * 1000 / len(frames), 40, 500))
    return save_gif(frames, path, duration_ms=[step_ms] * (len(frames) - 1) + [LAST_FRAME_MS])


def log_order_gif(module: GeneratorModule, logger, label: int = 0, seed: int = 0) -> None:
    """Writes ``order_<paradigm>.gif`` for ``label`` and logs it under ``order/`` of the MLflow run
    behind a Lightning MLFlowLogger (what train / the CLI call after fitting)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = order_gif(module, label, Path(tmp) / f"order_{module.paradigm.name}.gif", seed=seed)
        log_artifact(logger, path, "order")


def image_paradigms() -> list[str]:
    """Registered paradigms whose codes are raster H x W image grids (what the default config draws)."""
    return [name for name, cls in sorted(PARADIGMS.items()) if cls.code_layout == RASTER and not cls.video]


def write_order_gifs(out_dir: str | Path = "results/runs/order",
                     paradigms: Sequence[str] | None = None,
                     config: str | Path = "experiments/demo.yaml", overrides: Sequence[str] = (),
                     checkpoints: dict[str, str] | None = None, label: int = 0, overwrite: bool = False,
                     command: str | None = None) -> list[Path]:
    """``<out_dir>/order_<paradigm>.gif`` for each paradigm (default: every registered one that draws
    H x W images from raster codes, ``image_paradigms``), plus provenance.json: from its Lightning
    checkpoint when ``checkpoints`` names one, else from a freshly initialised model of ``config``
    (random tokens, same order; captioned "untrained"). A folder holding committed results is
    refused before anything is built, unless ``overwrite``."""
    from nar_bench.config import load_config
    from nar_bench.lit.data import GeneratorDataModule
    from nar_bench.lit.run_checkpoint import module_from_checkpoint, read_run_checkpoint
    from nar_bench.tracking.provenance import guard_output, provenance, write_provenance

    guard_output(out_dir, overwrite)
    paradigms = list(paradigms or image_paradigms())
    prov = provenance(command, "cpu")  # before any GIF is written: the commit is the code's, not -dirty
    checkpoints = checkpoints or {}
    for name in paradigms:
        PARADIGMS[name]  # an unknown name is one error naming the known ones
    for name in checkpoints:
        if name not in paradigms:
            raise NarBenchError(f"--ckpt {name}=...: '{name}' is not among --paradigms {' '.join(paradigms)}")
    # every model is built and checked before the first GIF is written: a bad last one leaves no half set
    modules, models = {}, {}
    for name in paradigms:
        if name in checkpoints:
            module = module_from_checkpoint(read_run_checkpoint(checkpoints[name]), checkpoints[name])
            models[name] = f"trained: {checkpoints[name]}"
        else:
            cfg = load_config(config, [f"model.paradigm={name}", *overrides])
            torch.manual_seed(cfg.seed)
            module = GeneratorModule(cfg, GeneratorDataModule(cfg.data).num_classes)
            models[name] = f"untrained ({config}; shows the order, not image quality)"
        if module.paradigm.codes.layout != RASTER:
            raise NarBenchError(f"generation-order GIFs draw a raster code grid; paradigm '{name}' makes "
                                f"{module.paradigm.codes.layout} codes: leave it out of --paradigms")
        if not 0 <= label < module.num_classes:
            raise NarBenchError(f"--label {label}: the {name} model has classes 0..{module.num_classes - 1}")
        modules[name] = module
    paths = []
    for name, module in modules.items():
        subtitle = f"class {label} | {models[name].split(' (')[0]}"
        paths.append(order_gif(module, label, Path(out_dir) / f"order_{name}.gif", seed=module.cfg.seed,
                               subtitle=subtitle))
    models = {f"model_{name}": model for name, model in models.items()}
    write_provenance(out_dir, {**prov, "label": str(label), **models})
    return paths


def main(args: argparse.Namespace) -> None:
    if any("=" not in item for item in args.ckpt):
        raise NarBenchError(f"--ckpt takes PARADIGM=PATH, got {' '.join(args.ckpt)}")
    checkpoints = dict(item.split("=", 1) for item in args.ckpt)
    for path in write_order_gifs(args.out, args.paradigms, args.config, args.overrides, checkpoints, args.label,
                                 args.overwrite, args.command_line):
        print(path)
