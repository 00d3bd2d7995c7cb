import argparse

import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

from nar_bench.config import load_config
from nar_bench.data.shapes import ShapesDataset
from nar_bench.errors import NarBenchError
from nar_bench.lit.tokenizer_module import TokenizerModule
from nar_bench.nn.llamagen_vae import AttnBlock, ConvNetConfig
from nar_bench.run.train_tokenizer import train_tokenizer
from nar_bench.tokenizers import build_tokenizer
from nar_bench.tokenizers.vq import VQConfig, VQTokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {"codebook_size": 32, "code_dim": 4, "ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 8,
        "norm_groups": 4}
TINY_OVERRIDES = [f"tokenizer.options.{k}={v}" for k, v in TINY.items()]


def tiny_cfg(*overrides: str):
    return load_config(None, ["tokenizer.name=vq", "data.image_size=16", "data.grid_size=8", *TINY_OVERRIDES,
                              *overrides])


def tiny_tokenizer(seed: int = 0) -> VQTokenizer:
    torch.manual_seed(seed)
    tok = VQTokenizer(VQConfig(**{**TINY, "ch_mult": (1, 2)}), image_size=16)
    with torch.no_grad():  # a spread-out codebook, so random images use many codes
        tok.quantize.embedding.weight.normal_()
    return tok.eval()


def shapes_batch(n: int = 8, size: int = 16) -> torch.Tensor:
    ds = ShapesDataset(n, image_size=size, grid=size // 4)
    return torch.stack([ds[i][0] for i in range(n)])


# --- official layout ------------------------------------------------------------------------------
RES, ATTN = ("norm1", "conv1", "norm2", "conv2"), ("norm", "q", "k", "v", "proj_out")


def llamagen_keys(ch_mult: tuple[int, ...], n_res: int) -> set[str]:
    """State-dict keys of LlamaGen's VQModel (tokenizer/tokenizer_image/vq_model.py), transcribed from
    its Encoder / Decoder / VectorQuantizer constructors; widths in units of ch."""
    def wb(prefix, names):
        return [f"{prefix}.{n}.{p}" for n in names for p in ("weight", "bias")]

    def res(prefix, cin, cout):
        return wb(prefix, RES + (("nin_shortcut",) if cin != cout else ()))

    last = len(ch_mult) - 1
    keys = wb("encoder", ["conv_in", "norm_out", "conv_out"]) + wb("decoder", ["conv_in", "norm_out", "conv_out"])
    block_in = 1
    for i, m in enumerate(ch_mult):
        for j in range(n_res):
            keys += res(f"encoder.conv_blocks.{i}.res.{j}", block_in, m)
            block_in = m
            keys += wb(f"encoder.conv_blocks.{i}.attn.{j}", ATTN) if i == last else []
        keys += wb(f"encoder.conv_blocks.{i}.downsample", ["conv"]) if i != last else []
    for part in ("encoder", "decoder"):
        keys += res(f"{part}.mid.0", 1, 1) + wb(f"{part}.mid.1", ATTN) + res(f"{part}.mid.2", 1, 1)
    block_in = ch_mult[-1]
    for idx, i in enumerate(reversed(range(len(ch_mult)))):
        for j in range(n_res + 1):
            keys += res(f"decoder.conv_blocks.{idx}.res.{j}", block_in, ch_mult[i])
            block_in = ch_mult[i]
            keys += wb(f"decoder.conv_blocks.{idx}.attn.{j}", ATTN) if i == last else []
        keys += wb(f"decoder.conv_blocks.{idx}.upsample", ["conv"]) if i != 0 else []
    keys += ["quantize.embedding.weight", "quantize.codebook_used"] + wb("", ["quant_conv", "post_quant_conv"])
    return {k.lstrip(".") for k in keys}


def test_state_dict_keys_and_shapes_are_llamagens():
    tok = VQTokenizer(VQConfig(codebook_size=64, code_dim=8, ch=8, ch_mult=(1, 2, 2), z_channels=16, norm_groups=4), 32)
    sd = tok.state_dict()
    assert set(sd) == llamagen_keys((1, 2, 2), 2)
    assert sd["quantize.embedding.weight"].shape == (64, 8)
    assert sd["quant_conv.weight"].shape == (8, 16, 1, 1) and sd["post_quant_conv.weight"].shape == (16, 8, 1, 1)
    assert sd["encoder.conv_blocks.1.res.0.nin_shortcut.weight"].shape == (16, 8, 1, 1)
    assert sd["decoder.conv_blocks.2.res.0.nin_shortcut.weight"].shape == (8, 16, 1, 1)
    assert sd["quantize.codebook_used"].shape == (65536,)


def test_full_vq16_is_72m_parameters_with_the_official_key_set():
    with torch.device("meta"):
        tok = VQTokenizer(VQConfig(), image_size=256)
    n = sum(p.numel() for p in tok.parameters())
    assert 71.5e6 < n < 72.5e6  # LlamaGen reports 72M for VQ-16
    assert set(tok.state_dict()) == llamagen_keys((1, 1, 2, 2, 4), 2)
    assert tok.grid == (16, 16) and tok.vocab_size == 16384


def test_attention_equals_the_original_bmm_formulation():
    torch.manual_seed(0)
    block, x = AttnBlock(ConvNetConfig(norm_groups=4), 8), torch.randn(2, 8, 5, 5)
    h = block.norm(x)
    q, k, v = (conv(h).reshape(2, 8, 25) for conv in (block.q, block.k, block.v))
    w = F.softmax(torch.bmm(q.permute(0, 2, 1), k) * 8**-0.5, dim=2)  # (B, hw_q, hw_k)
    reference = x + block.proj_out(torch.bmm(v, w.permute(0, 2, 1)).reshape(2, 8, 5, 5))
    torch.testing.assert_close(block(x), reference)


def test_official_layout_round_trip_by_path(tmp_path):
    tok = tiny_tokenizer()
    path = tmp_path / "vq_tiny.pt"
    # official training checkpoints wrap the weights under "model" next to optimizer state and args
    torch.save({"model": tok.state_dict(), "steps": 10, "args": argparse.Namespace(vq_model="VQ-16")}, path)
    loaded = build_tokenizer(tiny_cfg(f"tokenizer.checkpoint={path}")).eval()
    images = shapes_batch()
    codes = tok.encode(images)
    assert codes.shape == (8, 64) and codes.dtype == torch.long and len(codes.unique()) > 4
    assert torch.equal(loaded.encode(images), codes)
    assert torch.equal(loaded.decode(codes), tok.decode(codes))
    assert torch.equal(loaded.decode(codes.view(8, 8, 8)), tok.decode(codes))
    # a checkpoint saved before LlamaGen tracked codebook usage still loads
    sd = {k: v for k, v in tok.state_dict().items() if k != "quantize.codebook_used"}
    torch.save({"model": sd}, path)
    assert torch.equal(build_tokenizer(tiny_cfg(f"tokenizer.checkpoint={path}")).eval().encode(images), codes)


def test_codes_are_nearest_normalised_codebook_entries_in_raster_order():
    tok, images = tiny_tokenizer(), shapes_batch(2)
    z = F.normalize(tok.latents(images), dim=1).permute(0, 2, 3, 1).reshape(2, 64, 4)  # (B, h*w raster, C)
    codebook = F.normalize(tok.quantize.embedding.weight, dim=1)
    assert torch.equal(tok.encode(images), torch.cdist(z, codebook[None]).argmin(-1))


@pytest.mark.parametrize("overrides, message", [
    (["tokenizer.checkpoint=/nope/vq.pt"], "'/nope/vq.pt' not found; download LlamaGen's VQ-16 tokenizer vq_ds16_c2i"),
    (["tokenizer.options.codebok_size=3"], "valid options: preset, codebook_size"),
    (["tokenizer.options.preset=VQ-99"], "choose one of: vq_ds16, synthetic"),
    (["data.image_size=15"], "not a multiple of the tokenizer's downsample 2"),
    (["tokenizer.options.norm_groups=3"], "must be multiples of tokenizer.options.norm_groups 3"),
])
def test_bad_tokenizer_config_is_a_clear_error(overrides, message):
    with pytest.raises(NarBenchError, match=message.replace("(", r"\(")):
        build_tokenizer(tiny_cfg(*overrides))


def test_checkpoint_of_another_architecture_names_the_mismatch(tmp_path):
    path = tmp_path / "other.pt"
    other = VQTokenizer(VQConfig(**{**TINY, "ch_mult": (1, 2), "codebook_size": 48}), 16)
    torch.save({"model": other.state_dict()}, path)
    with pytest.raises(NarBenchError, match=r"shape \(file vs config\): quantize.embedding.weight \(48, 4\) vs \(32"):
        build_tokenizer(tiny_cfg(f"tokenizer.checkpoint={path}"))


# --- training -------------------------------------------------------------------------------------
def test_training_steps_reduce_reconstruction_loss_and_move_the_codebook():
    tok, images = tiny_tokenizer().train(), shapes_batch(16)
    codebook = tok.quantize.embedding.weight.detach().clone()
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        loss, logs = tok.training_loss(images)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else logs["rec_loss"]
    assert set(logs) == {"rec_loss", "codebook_loss", "commit_loss", "codebook_usage"}
    assert logs["rec_loss"] < 0.6 * first
    assert not torch.equal(tok.quantize.embedding.weight, codebook)  # the codebook loss trains it
    assert tok.encoder.conv_in.weight.grad.abs().sum() > 0  # straight-through reaches the encoder
    assert 0 < logs["codebook_usage"] <= 1


def test_train_tokenizer_logs_to_mlflow_and_writes_loadable_official_layout_weights(tmp_path):
    cfg = tiny_cfg("data.batch_size=8", "data.num_train=32", "data.num_val=8", "trainer.max_steps=4",
                   "trainer.val_check_interval=2", "trainer.log_every_n_steps=1", "optim.warmup_steps=1",
                   f"tracking.tracking_uri=sqlite:///{tmp_path}/mlruns.db", "tracking.experiment=test",
                   f"tracking.artifact_location={tmp_path}/art", f"output_dir={tmp_path}/runs")
    summary = train_tokenizer(cfg)
    assert summary["train_steps"] == 4
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    run = client.get_run(summary["mlflow_run_id"])
    assert {"train/rec_loss", "train/codebook_usage", "val/rec_loss"} <= set(run.data.metrics)
    assert "reconstructions" in {a.path for a in client.list_artifacts(run.info.run_id)}
    checkpoint = torch.load(summary["tokenizer_checkpoint"], weights_only=True)
    assert set(checkpoint) == {"model"} and set(checkpoint["model"]) == llamagen_keys((1, 2), 1)
    tok = build_tokenizer(tiny_cfg(f"tokenizer.checkpoint={summary['tokenizer_checkpoint']}"))
    torch.testing.assert_close(tok.state_dict(), checkpoint["model"])


def test_tokenizer_module_rejects_untrainable_tokenizers():
    with pytest.raises(NarBenchError, match="'palette' is not trainable"):
        TokenizerModule(load_config(None, []))

