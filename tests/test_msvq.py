"""VAR's multi-scale residual VQ tokenizer: code layout, round trips, residual per scale, checkpoints."""

import itertools

import pytest
import torch

from nar_bench.checkpoints import load_official, to_official
from nar_bench.config import load_config
from nar_bench.data.shapes import ShapesDataset
from nar_bench.errors import NarBenchError
from nar_bench.nn.transformer import count_parameters
from nar_bench.registry import TOKENIZERS
from nar_bench.tokenizers.msvq import PAPER_SCALES, PRESETS, MSVQConfig, MultiScaleVQ

TINY_SCALES = (1, 2, 4, 8)


def tiny_msvq(vocab_size: int = 64, scales=TINY_SCALES, **kw) -> MultiScaleVQ:
    """16px images -> 8x8 latent (downsample 2)."""
    cfg = MSVQConfig(scales=scales, ch=8, ch_mult=(1, 2), norm_groups=4, vocab_size=vocab_size, z_channels=8, **kw)
    return MultiScaleVQ(cfg)


def shapes_images(n: int) -> torch.Tensor:
    ds = ShapesDataset(n, image_size=16, grid=8)
    return torch.stack([ds[i][0] for i in range(n)])


def test_encode_decode_shapes_and_prefixes():
    torch.manual_seed(0)
    tok = tiny_msvq().eval()
    images = shapes_images(3)
    codes = tok.encode(images)
    assert tok.num_tokens == 1 + 4 + 16 + 64 and codes.shape == (3, 85)
    assert codes.min() >= 0 and codes.max() < tok.vocab_size
    assert tok.grid == (8, 8) and tok.vocab_size == 64
    assert [c.shape[1] for c in tok.split_scales(codes)] == [1, 4, 16, 64]
    out = tok.decode(codes)
    assert out.shape == images.shape and out.abs().max() <= 1
    assert tok.decode(codes[:, :5]).shape == images.shape  # first two scales only: a coarser image
    assert torch.equal(tok.encode(images), codes)  # deterministic
    with pytest.raises(ValueError, match="whole number of scales"):
        tok.split_scales(codes[:, :7])


def test_paper_layout_matches_var():
    """Paper scales: 680 codes in 10 scales, VAR's phi choice per scale (scale 2 is a float tie that
    VAR's rounding sends to phi 1), and the official preset's key names (its 108.9M parameters are
    pinned as a regression check of the layout, not a published figure)."""
    tok = tiny_msvq(scales=PAPER_SCALES)
    assert tok.num_tokens == 680 and len(tok.scales) == 10
    assert tok.quantize.quant_resi.index == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    with torch.device("meta"):
        official = MultiScaleVQ(PRESETS["vae_ch160v4096z32"])
    assert round(count_parameters(official) / 1e6, 1) == 108.9
    keys = set(official.state_dict())
    for key in ("quantize.embedding.weight", "quantize.quant_resi.qresi_ls.3.weight", "quant_conv.weight",
                "post_quant_conv.bias", "encoder.down.4.attn.1.qkv.weight", "encoder.down.3.downsample.conv.weight",
                "encoder.mid.attn_1.proj_out.weight", "decoder.up.4.block.2.conv2.weight",
                "decoder.up.1.upsample.conv.weight", "decoder.conv_out.weight"):
        assert key in keys, key
    assert official.quantize.embedding.weight.shape == (4096, 32)


def test_residual_shrinks_with_every_scale():
    """After a short training, reconstructing from more scales is always closer, in the latent and
    in the image."""
    torch.manual_seed(0)
    tok = tiny_msvq()
    images = shapes_images(64)
    opt = torch.optim.AdamW(tok.parameters(), lr=3e-3)
    for _ in range(60):
        loss, logs = tok.training_loss(images[torch.randint(0, 64, (16,))])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(logs) == {"rec_loss", "vq_loss", "codebook_usage"} and logs["codebook_usage"] > 0.5
    tok.eval()
    codes = tok.encode(images)
    with torch.no_grad():
        f = tok.features(images)
        latent = [(tok.codes_to_fhat(codes[:, :end]) - f).pow(2).mean() for _, end in tok.scale_bounds]
        image = [(tok.decode(codes[:, :end]) - images).pow(2).mean() for _, end in tok.scale_bounds]
    for errs in (latent, image):
        assert all(b < a for a, b in itertools.pairwise(errs)), errs


def test_straight_through_reaches_encoder_and_codebook():
    tok = tiny_msvq()
    loss, _ = tok.training_loss(shapes_images(2))
    loss.backward()
    for p in (tok.encoder.conv_in.weight, tok.quantize.embedding.weight, tok.quantize.quant_resi.qresi_ls[0].weight,
              tok.decoder.conv_out.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_official_layout_round_trip(tmp_path):
    torch.manual_seed(0)
    tok = tiny_msvq()
    path = tmp_path / "vae.pth"
    torch.save(to_official(tok), path)
    assert "quantize.ema_vocab_hit_SV" in torch.load(path)
    fresh = tiny_msvq()
    load_official(fresh, path)
    images = shapes_images(2)
    codes = tok.eval().encode(images)
    assert torch.equal(fresh.eval().encode(images), codes)
    assert torch.equal(fresh.decode(codes), tok.decode(codes))
    with pytest.raises(NarBenchError, match="vocab_size"):
        load_official(tiny_msvq(vocab_size=32), path)
    with pytest.raises(NarBenchError, match=r"unexpected keys \(\d+\): quantize.quant_resi"):
        load_official(tiny_msvq(quant_resi=0.0), path)  # a model without phi convs
    with pytest.raises(NarBenchError, match="not found"):
        load_official(fresh, tmp_path / "nope.pth")


def test_from_config_reads_scales_and_checks_latent_size():
    overrides = ["data.image_size=16", "tokenizer.name=msvq", "tokenizer.options.scales=[1,2,4,8]",
                 "model.paradigm=var", "tokenizer.options.ch=8", "tokenizer.options.ch_mult=[1,2]",
                 "tokenizer.options.norm_groups=4"]
    tok = TOKENIZERS["msvq"].from_config(load_config(None, overrides))
    assert tok.scales == (1, 2, 4, 8) and tok.grid == (8, 8)
    with pytest.raises(NarBenchError, match="last scale is 16"):
        TOKENIZERS["msvq"].from_config(load_config(None, overrides[:2] + overrides[3:]))  # default scales end at 16
    with pytest.raises(NarBenchError, match="valid options"):
        TOKENIZERS["msvq"].from_config(load_config(None, overrides + ["tokenizer.options.chanels=3"]))
