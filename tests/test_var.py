"""VAR-style next-scale prediction: schedule, block-causal mask, cached decoding vs full forward,
CFG ramp, parameter counts, official checkpoint round trip, a tiny end-to-end train + sample."""

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from nar_bench.checkpoints import load_official, to_official
from nar_bench.config import load_config
from nar_bench.errors import NarBenchError
from nar_bench.nn.adaln import FusedAdaLNDecode
from nar_bench.nn.sampling import SamplingConfig, guide
from nar_bench.nn.transformer import MODEL_SIZES, TransformerConfig, count_parameters, setup_kv_caches
from nar_bench.paradigms.base import step_of_positions
from nar_bench.paradigms.model_config import DROPOUTS, paradigm_options, transformer_config
from nar_bench.paradigms.var import VAR, VAROptions
from nar_bench.registry import PARADIGMS, TOKENIZERS
from nar_bench.tokenizers.base import MULTISCALE, CodeSpace
from nar_bench.tokenizers.msvq import PAPER_SCALES
from tests.test_msvq import TINY_SCALES, shapes_images, tiny_msvq


def tiny_var(scales=TINY_SCALES, depth: int = 2, randomize: bool = True, tokenizer=None, **options) -> VAR:
    """A small VAR on ``tokenizer``'s code space (default: a tiny msvq with ``scales``)."""
    cfg = TransformerConfig(dim=32, n_layers=depth, n_heads=2, vocab_size=64, num_classes=4,
                            resid_dropout=0.0, ffn_dropout=0.0, class_dropout=0.1)
    var = VAR(cfg, (tokenizer or tiny_msvq(scales=scales)).code_space, VAROptions(**options))
    if randomize:  # VAR's init gates every block to ~identity and shrinks the head: use random weights
        with torch.no_grad():
            for p in var.parameters():
                p.normal_(0, 0.3)
    return var


def paper_var(depth: int) -> VAR:
    with torch.device("meta"):
        cfg = TransformerConfig(dim=64 * depth, n_layers=depth, n_heads=depth, vocab_size=4096, num_classes=1000)
        codes = CodeSpace(4096, (16, 16), MULTISCALE, PAPER_SCALES, next_scale=SimpleNamespace(z_channels=32))
        return VAR(cfg, codes, VAROptions())


def record_head_outputs(var: VAR) -> tuple[list, object]:
    """Every logits tensor the head produces (one per decoding step), and the hook handle."""
    recorded = []
    return recorded, var.head.register_forward_hook(lambda m, i, o: recorded.append(o.float().clone()))


def test_one_step_per_scale():
    var = paper_var(16)
    assert var.num_steps == 10 and var.num_tokens == 680
    steps = var.schedule()
    assert [len(s) for s in steps] == [s * s for s in PAPER_SCALES]
    assert torch.equal(torch.cat(steps), torch.arange(680))
    synthetic = tiny_var(scales=(1, 2, 4, 8, 16))
    assert synthetic.num_steps == 5 and synthetic.num_tokens == 341


def test_block_causal_mask_matches_schedule():
    var = tiny_var()
    step = step_of_positions(var.schedule(), var.num_tokens)
    assert torch.equal(var.mask, step[None, :] <= step[:, None])
    # scale 2 (positions 5..20) sees scales 0-2 entirely and nothing of scale 3
    assert var.mask[5:21, :21].all() and not var.mask[5:21, 21:].any()
    assert var.mask[0].sum() == 1  # the start token sees only itself


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_cached_decoding_equals_full_forward(cfg_scale):
    """Per-scale logits recorded during KV-cached generation equal the teacher-forced forward on the
    generated codes; with CFG, the conditional and the null-class halves each match."""
    torch.manual_seed(0)
    tok = tiny_msvq().eval()
    var = tiny_var(tokenizer=tok).eval()
    recorded, hook = record_head_outputs(var)
    labels = torch.tensor([0, 3, 1])
    codes = var.generate(labels, SamplingConfig(cfg_scale=cfg_scale, top_k=10), torch.Generator().manual_seed(1))
    hook.remove()
    assert codes.shape == (3, var.num_tokens) and len(recorded) == var.num_steps
    cached = torch.cat(recorded, dim=1)
    with torch.no_grad():
        full = var(codes, labels)
        assert torch.allclose(cached[:3], full, atol=1e-4), (cached[:3] - full).abs().max()
        if cfg_scale != 1.0:
            null = var(codes, torch.full_like(labels, 4))
            assert torch.allclose(cached[3:], null, atol=1e-4)


def test_cfg_ramps_linearly_over_scales():
    var = paper_var(16)
    assert var.guidance_scales(2.5) == pytest.approx([1 + 1.5 * si / 9 for si in range(10)])  # VAR cfg=1.5
    assert var.guidance_scales(1.0) == [1.0] * 10


def test_generate_applies_the_ramped_scale_per_step():
    """Greedy decoding: each scale's codes are the argmax of the guided logits at that scale's
    ramped guidance scale (and would differ at the un-ramped one)."""
    torch.manual_seed(0)
    for ramp in (True, False):
        tok = tiny_msvq().eval()
        var = tiny_var(cfg_ramp=ramp, tokenizer=tok).eval()
        recorded, hook = record_head_outputs(var)
        codes = var.generate(torch.tensor([0, 2]), SamplingConfig(cfg_scale=4.0, temperature=0))
        hook.remove()
        scales = var.guidance_scales(4.0)
        assert scales == ([1.0, 2.0, 3.0, 4.0] if ramp else [4.0] * 4)
        for (begin, end), logits, s in zip(var.scale_bounds, recorded, scales, strict=True):
            assert torch.equal(codes[:, begin:end], guide(logits, s).argmax(-1))


def test_paper_parameter_counts():
    """VAR-d16 310M and d20 600M within 2%; d24 1.0B and d30 2.0B as the paper rounds them."""
    for depth in (16, 20, 24, 30):
        assert MODEL_SIZES[f"d{depth}"] == (64 * depth, depth, depth)
    assert abs(count_parameters(paper_var(16)) / 310e6 - 1) < 0.02
    assert abs(count_parameters(paper_var(20)) / 600e6 - 1) < 0.02
    assert round(count_parameters(paper_var(24)) / 1e9, 1) == 1.0
    assert round(count_parameters(paper_var(30)) / 1e9, 1) == 2.0


def test_official_key_names():
    keys = set(tiny_var(randomize=False).state_dict())
    for key in ("word_embed.weight", "class_emb.weight", "pos_start", "pos_1LC", "lvl_embed.weight",
                "blocks.1.attn.mat_qkv.weight", "blocks.1.attn.q_bias", "blocks.1.attn.v_bias",
                "blocks.1.attn.scale_mul_1H11", "blocks.1.attn.proj.bias", "blocks.1.ffn.fc1.weight",
                "blocks.1.ffn.fc2.bias", "blocks.1.ada_lin.1.weight", "head_nm.ada_lin.1.bias", "head.weight"):
        assert key in keys, key
    assert tiny_var(randomize=False).class_emb.weight.shape[0] == 5  # 4 classes + the null class


def test_official_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    tok = tiny_msvq().eval()
    var = tiny_var(tokenizer=tok).eval()
    path = tmp_path / "var_d2.pth"
    torch.save(to_official(var), path)
    assert {"lvl_1L", "attn_bias_for_masking", "blocks.0.attn.zero_k_bias"} <= set(torch.load(path))
    fresh = tiny_var(randomize=False, tokenizer=tok).eval()
    load_official(fresh, path)
    codes = torch.randint(0, 64, (2, var.num_tokens))
    labels = torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.equal(fresh(codes, labels), var(codes, labels))
    with pytest.raises(NarBenchError, match="model.size=d2"):
        load_official(tiny_var(depth=3, randomize=False), path)
    with pytest.raises(NarBenchError, match="scales"):
        load_official(tiny_var(scales=(1, 2, 3, 8), randomize=False), path)
    with pytest.raises(NarBenchError, match="attn_l2_norm"):
        load_official(tiny_var(attn_l2_norm=False, randomize=False), path)


def test_built_from_the_tokenizers_multiscale_code_space():
    """The code space is the one source of the scales, the sequence length and the input width; a
    raster code space is refused with the fix."""
    var = tiny_var(scales=(1, 4, 8), randomize=False)
    assert var.scales == (1, 4, 8) and var.num_tokens == 81 and var.word_embed.in_features == 8
    with pytest.raises(NarBenchError, match="multi-scale code space.*tokenizer.name=msvq"):
        VAR(var.model_cfg, CodeSpace(64, (8, 8)), VAROptions())


def test_selectable_from_config():
    cfg = load_config(None, ["model.paradigm=var", "model.size=d2", "model.options.cfg_ramp=false"])
    options = paradigm_options(cfg.model)
    var = PARADIGMS["var"](transformer_config(cfg.model, 64, 4), tiny_msvq().code_space, options)
    assert var.options.cfg_ramp is False and var.guidance_scales(2.0) == [2.0] * 4
    assert len(var.blocks) == 2 and var.model_cfg.dim == 128
    with pytest.raises(NarBenchError, match="valid options"):
        paradigm_options(load_config(None, ["model.paradigm=var", "model.options.scale=[1]"]).model)


def test_tiny_end_to_end_train_and_sample(tmp_path):
    """Everything built from one config: Lightning trains the msvq tokenizer on shapes, its checkpoint
    reloads through ``tokenizer.checkpoint``, VAR learns the codes, then samples images."""
    import lightning as L  # here, so that a broken Lightning install fails this test only

    from nar_bench.lit.tokenizer_module import TokenizerModule

    torch.manual_seed(0)
    tokenizer = {"ch": 8, "ch_mult": "[1,2]", "norm_groups": 4, "vocab_size": 64, "z_channels": 8}  # = tiny_msvq()
    overrides = ["data.image_size=16", "tokenizer.name=msvq", "model.paradigm=var", "model.size=d2",
                 "tokenizer.options.scales=[1,2,4,8]", "optim.lr=3e-3",
                 "optim.warmup_steps=0"] + [f"tokenizer.options.{k}={v}" for k, v in tokenizer.items()]
    cfg = load_config(None, overrides)
    images = shapes_images(64)
    labels = torch.arange(64) % 4
    module = TokenizerModule(cfg)
    trainer = L.Trainer(max_steps=40, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(TensorDataset(images, labels), batch_size=16, shuffle=True))
    trainer.save_checkpoint(tmp_path / "msvq.ckpt")
    reloaded = load_config(None, overrides + [f"tokenizer.checkpoint={tmp_path / 'msvq.ckpt'}"])
    tok = TOKENIZERS["msvq"].from_config(reloaded).eval()
    codes = tok.encode(images)
    assert torch.equal(codes, module.tokenizer.eval().encode(images))

    model = transformer_config(cfg.model, tok.vocab_size, 4)
    var = PARADIGMS["var"](model, tok.code_space, paradigm_options(cfg.model))
    opt = torch.optim.AdamW(var.parameters(), lr=2e-3)
    losses = []
    for step in range(30):
        idx = torch.arange(16) + 16 * (step % 4)
        loss = var.loss(codes[idx], labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < losses[0] - 0.3, losses
    out = var.generate(torch.tensor([0, 1, 2, 3]), SamplingConfig(cfg_scale=2.0, top_k=20, top_p=0.95))
    samples = tok.decode(out)
    assert out.shape == (4, 85) and samples.shape == (4, 3, 16, 16) and samples.abs().max() <= 1


@pytest.mark.parametrize("compile", [False, True])
def test_fused_decode_step_equals_the_eager_block(compile):
    """The fused AdaLN step (compiled regions around the shared decode attention) writes the same
    cache and gives the same block outputs as the eager cached forward, scale after scale."""
    torch.manual_seed(0)
    block = tiny_var().eval().blocks[0]
    cond, xs = torch.randn(3, 32), [torch.randn(3, n, 32) for n in (1, 4, 9)]
    outputs, caches = [], []
    for fused in (None, FusedAdaLNDecode(compile=compile)):
        block.fused_decode = fused
        setup_kv_caches(block, 3, 14)
        start, outs = 0, []
        with torch.no_grad():
            for x in xs:
                outs.append(block(x, cond, cache_start=start))
                start += x.shape[1]
        outputs.append(outs)
        caches.append(block.attn.kv_cache)
        block.attn.kv_cache = None
    for out, ref in zip(outputs[1], outputs[0], strict=True):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(caches[1].k, caches[0].k, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(caches[1].v, caches[0].v, rtol=1e-5, atol=1e-5)


def test_compiled_decoding_gives_the_eager_greedy_codes():
    var = tiny_var().eval()
    labels, greedy = torch.tensor([0, 3]), SamplingConfig(cfg_scale=2.0, temperature=0)
    ref = var.generate(labels, greedy)
    assert var.compile_decoding() and all(b.fused_decode is not None for b in var.blocks)
    out = var.generate(labels, greedy)
    assert torch.equal(out, ref)


@pytest.mark.cuda
def test_compiled_decoding_gives_the_eager_greedy_codes_on_gpu():
    """On a GPU the fused step runs the Triton decode attention (tiny heads of 16)."""
    tokenizer = tiny_msvq(scales=TINY_SCALES).cuda()  # VAR builds each next scale's input with it
    var = tiny_var(tokenizer=tokenizer).cuda().eval()
    labels, greedy = torch.tensor([0, 3, 1], device="cuda"), SamplingConfig(cfg_scale=2.0, temperature=0)
    ref = var.generate(labels, greedy)
    assert var.compile_decoding()
    assert torch.equal(var.generate(labels, greedy), ref)



def test_test_kit_and_released_dropout_recipe():
    """The registry-wide tests run on ``VAR.tiny()``; here its step count is pinned. Unset dropouts (token,
    resid, ffn, class) are the released recipe: VAR's models/var.py: drop_rate = attn_drop_rate = 0, label
    dropout 0.1."""
    assert VAR.tiny()[0].num_steps == 4  # the kit's msvq scales 1, 2, 4, 8
    assert tuple(VAR.default_dropouts[key] for key in DROPOUTS) == (0.0, 0.0, 0.0, 0.1)
