"""MaskGIT paradigm: mask schedule, training mask and masked-only loss, confidence decoding (every token
committed once, never changed), CFG batch doubling, parameter count, the evaluate path."""

import math

import pytest
import torch
import torch.nn.functional as F

from nar_bench.config import load_config
from nar_bench.errors import NarBenchError
from nar_bench.evaluation import evaluate
from nar_bench.lit.module import GeneratorModule
from nar_bench.nn.sampling import SamplingConfig, with_null_class
from nar_bench.nn.transformer import MODEL_SIZES, TransformerConfig, count_parameters
from nar_bench.paradigms.maskgit import MaskGIT, MaskGITOptions, masked_counts
from nar_bench.paradigms.model_config import DROPOUTS, paradigm_options
from nar_bench.paradigms.raster_ar import RasterAR
from tests.conftest import on_grid, randomize_heads, train_steps

VOCAB, CLASSES, GRID = 32, 5, (4, 4)
NO_CFG = SamplingConfig(cfg_scale=1.0)
CFG = SamplingConfig(cfg_scale=3.0, temperature=0.9, top_k=8, top_p=0.9)


def make_maskgit(grid=GRID, seed=0, **options) -> MaskGIT:
    torch.manual_seed(seed)
    cfg = TransformerConfig(dim=64, n_layers=2, n_heads=4, vocab_size=VOCAB, num_classes=CLASSES)
    return randomize_heads(MaskGIT(*on_grid(cfg, grid), MaskGITOptions(**options)), std=0.2).eval()


def sample_batch(batch=3, n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, n), generator=g), torch.randint(0, CLASSES, (batch,), generator=g)


def recording_forwards(model: MaskGIT) -> list[dict]:
    """Shadows ``masked_logits`` to record each decoding forward's inputs (cleared by ``del model.masked_logits``)."""
    calls, forward = [], model.masked_logits

    def record(tokens, masked, cond, pending):
        calls.append({"tokens": tokens.clone(), "masked": masked.clone(), "cond": cond.clone(),
                      "pending": pending.clone()})
        return forward(tokens, masked, cond, pending)

    model.masked_logits = record
    return calls


# --- schedule -----------------------------------------------------------------------------------
def test_cosine_schedule_on_16x16_in_8_steps():
    after = masked_counts(256, 8, "cosine")
    # floor(256 cos(pi/2 (s+1)/8)) for s < 7, then 0
    assert after == [math.floor(256 * math.cos(math.pi / 2 * (s + 1) / 8)) for s in range(7)] + [0]
    assert after == [251, 236, 212, 181, 142, 97, 49, 0]
    model = MaskGIT(*on_grid(TransformerConfig(dim=32, n_layers=1, n_heads=2, vocab_size=8, num_classes=2), (16, 16)))
    assert model.num_steps == 8 and model.step_counts() == [5, 15, 24, 31, 39, 45, 48, 49]
    assert sum(model.step_counts()) == 256


@pytest.mark.parametrize("n, steps, schedule", [(256, 31, "cosine"), (256, 8, "linear"), (16, 8, "cosine"),
                                                (16, 16, "cosine"), (5, 5, "linear"), (7, 1, "cosine")])
def test_masked_counts_fall_strictly_to_zero(n, steps, schedule):
    after = masked_counts(n, steps, schedule)
    assert len(after) == steps and after[-1] == 0
    assert all(a > b for a, b in zip([n, *after[:-1]], after, strict=True))  # every step commits at least one token


def official_masked_counts(n: int, steps: int, schedule: str) -> list[int]:
    """google-research/maskgit's parallel_decode rule, re-written from its published algorithm: after
    step s, mask_len = max(1, min(still_masked - 1, floor(N gamma((s+1)/T)))) tokens are masked
    again; its output is the last step's samples before that masking, so nothing stays masked."""
    gamma = {"cosine": lambda r: math.cos(math.pi / 2 * r), "linear": lambda r: 1 - r}[schedule]
    counts, masked = [], n
    for s in range(steps):
        masked = 0 if s == steps - 1 else max(1, min(masked - 1, math.floor(n * gamma((s + 1) / steps))))
        counts.append(masked)
    return counts


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("n, steps", [(256, 8), (256, 12), (256, 31), (256, 256), (64, 64), (16, 8), (16, 12)])
def test_masked_counts_and_temperature_annealing_are_maskgits_own(n, steps, schedule):
    """The official sampler's counts (its minimum-commit bound included) and choice temperature
    4.5 (1 - (s+1)/T): 4.5 is the scale before annealing, so step 0 already gets 4.5 (1 - 1/T)."""
    assert masked_counts(n, steps, schedule) == official_masked_counts(n, steps, schedule)
    model = MaskGIT(*on_grid(TransformerConfig(dim=32, n_layers=1, n_heads=2, vocab_size=8, num_classes=2), (16, 16)),
                    MaskGITOptions(steps=8))
    assert model.choice_temperatures()[0] == pytest.approx(3.9375) and model.choice_temperatures()[-1] == 0


def test_linear_schedule_and_bad_options():
    assert masked_counts(16, 8, "linear") == [14, 12, 10, 8, 6, 4, 2, 0]
    with pytest.raises(NarBenchError, match="between 1 and the 16 tokens"):
        masked_counts(16, 17, "cosine")
    with pytest.raises(NarBenchError, match="schedule='square'"):
        MaskGITOptions(schedule="square")
    with pytest.raises(NarBenchError, match="valid options: steps, schedule, choice_temperature"):
        paradigm_options(load_config(None, ["model.paradigm=maskgit", "model.options.regions=4"]).model)


def test_schedule_has_no_fixed_raster_order():
    model = make_maskgit()
    with pytest.raises(NarBenchError, match="no fixed raster schedule"):
        model.schedule()
    with pytest.raises(NarBenchError, match="call it before token_steps"):
        model.token_steps()
    assert model.choice_temperatures() == pytest.approx([4.5 * (1 - (s + 1) / 8) for s in range(8)])


def test_parameter_count_of_size_b():
    dim, layers, heads = MODEL_SIZES["B"]
    cfg = TransformerConfig(dim=dim, n_layers=layers, n_heads=heads, vocab_size=16384, num_classes=1000)
    with torch.device("meta"):
        maskgit, ar = MaskGIT(*on_grid(cfg, (16, 16))), RasterAR(*on_grid(cfg, (16, 16)))
    assert count_parameters(maskgit) == 110_889_216 == count_parameters(ar) + dim  # backbone + mask embedding


# --- training -------------------------------------------------------------------------------------
def test_training_mask_hides_ceil_gamma_n_random_positions():
    model = make_maskgit()
    masked = model.training_mask(64, "cpu", torch.Generator().manual_seed(0))
    r = torch.rand(64, generator=torch.Generator().manual_seed(0))  # the mask's first draw
    expected = torch.ceil(torch.cos(math.pi / 2 * r) * 16).long().clamp(min=1)
    assert torch.equal(masked.sum(1), expected)
    assert masked.any(0).all()  # positions are random, not a fixed prefix


def test_loss_scores_the_masked_positions_only():
    model = make_maskgit()
    tokens, labels = sample_batch()
    torch.manual_seed(3)
    heads = []
    hook = model.backbone.output.register_forward_hook(lambda m, args, out: heads.append(out.shape))
    loss = model.loss(tokens, labels)  # eval mode: the mask is the only random draw
    hook.remove()
    torch.manual_seed(3)
    masked = model.training_mask(3, "cpu")
    assert heads == [(int(masked.sum()), VOCAB)]  # the head ran on the masked positions alone
    logits = model(tokens, labels, masked)
    assert loss.item() == pytest.approx(F.cross_entropy(logits[masked], tokens[masked]).item(), abs=1e-6)
    assert loss.item() != pytest.approx(F.cross_entropy(logits.flatten(0, 1), tokens.flatten()).item(), abs=1e-4)

    # Masked tokens are hidden: changing them leaves every logit unchanged (only the targets move).
    changed = torch.where(masked, (tokens + 1) % VOCAB, tokens)
    assert torch.allclose(model(changed, labels, masked), logits, atol=1e-6)
    assert not torch.allclose(model(changed, labels, masked.logical_not()), model(tokens, labels, ~masked))


def test_training_reduces_the_loss_and_reaches_every_parameter():
    model = make_maskgit().train()
    tokens, labels = sample_batch(batch=8)
    torch.manual_seed(0)
    losses = train_steps(model, tokens, labels, 25)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


# --- decoding -------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampling", [NO_CFG, CFG], ids=["no_cfg", "cfg"])
def test_every_token_is_committed_once_and_never_changes(sampling):
    model = make_maskgit(choice_temperature=2.0)
    labels = torch.tensor([0, 3, 4])
    calls = recording_forwards(model)
    codes = model.generate(labels, sampling, torch.Generator().manual_seed(0)).flatten(1)
    del model.masked_logits
    assert codes.shape == (3, 16) and codes.min() >= 0 and codes.max() < VOCAB
    steps = torch.stack([model.token_steps(i) for i in range(3)])
    assert len(calls) == model.num_steps == 8
    for row in steps:  # each step commits exactly the schedule's count, each token exactly once
        assert torch.bincount(row, minlength=8).tolist() == model.step_counts()
    for s, call in enumerate(calls):
        assert torch.equal(call["masked"], steps >= s)  # masked = not yet committed
        assert torch.equal(call["pending"].sort(1).values, (steps >= s).nonzero()[:, 1].view(3, -1))
        done = steps < s
        assert torch.equal(call["tokens"][done], codes[done])  # a committed token is final
    # the positions are data dependent: rows with different labels decode in different orders
    assert not torch.equal(steps[0], steps[1])


def test_cfg_doubles_the_batch_and_every_step_reads_the_whole_sequence():
    model = make_maskgit()
    labels = torch.tensor([1, 2])
    shapes = []
    hook = model.backbone.layers[0].register_forward_hook(lambda m, args, out: shapes.append(tuple(out.shape)))
    calls = recording_forwards(model)
    model.generate(labels, CFG)
    assert all(torch.equal(c["cond"], with_null_class(labels, CLASSES)) for c in calls)
    assert shapes == [(4, 1 + 16, 64)] * 8  # 2B rows, condition + all N tokens, every step (no KV cache)
    calls.clear(), shapes.clear()
    model.generate(labels, NO_CFG)
    del model.masked_logits
    hook.remove()
    assert all(torch.equal(c["cond"], labels) for c in calls) and shapes == [(2, 17, 64)] * 8


def test_without_noise_each_step_keeps_the_most_confident_tokens():
    model = make_maskgit(choice_temperature=0.0)
    labels = torch.tensor([2, 4])
    greedy = SamplingConfig(cfg_scale=1.0, temperature=0.0)
    codes = model.generate(labels, greedy).flatten(1)
    with torch.no_grad():
        first = model(torch.zeros_like(codes), labels).log_softmax(-1)  # step 0 sees every token masked
    confidence, best = first.max(-1)
    keep = model.step_counts()[0]
    for i in range(2):
        committed = (model.token_steps(i) == 0).nonzero().flatten()
        assert torch.equal(committed.sort().values, confidence[i].topk(keep).indices.sort().values)
        assert torch.equal(codes[i, committed], best[i, committed])


def test_generation_is_seeded_by_the_generator():
    model = make_maskgit()
    labels = torch.tensor([0, 1, 2])
    draw = [model.generate(labels, CFG, torch.Generator().manual_seed(seed)) for seed in (5, 5, 6)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])


# --- the GeneratorModule / evaluate path ----------------------------------------------------------
@pytest.mark.usefixtures("metrics_cache", "single_thread")
def test_evaluate_runs_maskgit_end_to_end(tmp_path):
    cfg = load_config("experiments/demo.yaml", [
        "model.paradigm=maskgit", "model.size=tiny", "model.options.steps=4", "data.image_size=16",
        "data.grid_size=4", "trainer.accelerator=cpu", "eval.num_samples=16", "eval.batch_size=16",
        "eval.reference_size=32", "eval.extractor_options.steps=20", "eval.extractor_options.width=8",
        f"tracking.tracking_uri=sqlite:///{tmp_path}/mlruns.db", f"tracking.artifact_location={tmp_path}/art"])
    torch.manual_seed(0)
    module = GeneratorModule(cfg, num_classes=16)
    randomize_heads(module.paradigm)
    assert module.paradigm.name == "maskgit" and module.paradigm.num_steps == 4
    images = module.sample_grid(seed=0)
    assert images.shape == (16 * cfg.eval.samples_per_class, 3, 16, 16) and images.dtype == torch.uint8
    metrics = evaluate(module, cfg, num_samples=16, batch_size=16, out_dir=tmp_path / "out")
    assert metrics["num_samples"] == 16 and 0 <= metrics["class_accuracy"] <= 1
    assert all(math.isfinite(v) for v in metrics.values())


def test_fused_regions_give_the_eager_decoding_logits():
    """compile_decoding's maths (the shared fused regions, run uncompiled here) equals the eager
    bidirectional forward: same logits of every decoding forward, same greedy codes."""
    from nar_bench.nn.fused_decode import disable_fused_decode, enable_fused_decode

    model, greedy = make_maskgit(), SamplingConfig(cfg_scale=2.0, temperature=0)
    labels = torch.tensor([1, 3])
    tokens, _ = sample_batch(2)
    masked = torch.rand(2, 16, generator=torch.Generator().manual_seed(0)) < 0.5
    pending = torch.arange(16).expand(2, 16)
    cond = with_null_class(labels, CLASSES)
    with torch.no_grad():
        ref_logits = model.masked_logits(tokens, masked, cond, pending)
        ref_codes = model.generate(labels, greedy, torch.Generator().manual_seed(0))  # seeded choice noise
        assert enable_fused_decode(model, compile=False) == 2
        logits = model.masked_logits(tokens, masked, cond, pending)
        codes = model.generate(labels, greedy, torch.Generator().manual_seed(0))
    disable_fused_decode(model)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(codes, ref_codes)



def test_test_kit_and_released_dropout_recipe():
    """The registry-wide tests run on ``MaskGIT.tiny()``; here its step count is pinned. Unset dropouts
    (token, resid, ffn, class) are the released recipe: MaskGIT's BERT-style transformer: 0.1 on embeddings
    and hidden layers, and the same CFG label dropout."""
    assert MaskGIT.tiny()[0].num_steps == 8  # options.steps (default 8) over the 4 x 4 grid
    assert tuple(MaskGIT.default_dropouts[key] for key in DROPOUTS) == (0.1, 0.1, 0.1, 0.1)
