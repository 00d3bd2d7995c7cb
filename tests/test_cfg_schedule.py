"""Issue 13: one CFG-interval meaning across paradigms (decoding steps 0 .. N-1), the official
scripts' meanings behind ``cfg_schedule=official``, and scale <= 1 = no guidance.

Each ``*_official_loop`` below re-traces, in our own words, the counter logic of one official
sampling loop (LlamaGen, NAR-images / NAR-videos, PAR) and lists the guided decoding steps; the
paradigms' ``official_guided_steps`` must agree with it for every interval, and pinned cases name
the guided tokens explicitly. Every registered paradigm either has such a loop here or an official
sampler without an interval. Generic tests run on each paradigm's test kit (``Paradigm.tiny``).
"""

import pytest
import torch

import nar_bench.paradigms.engine as engine
import nar_bench.paradigms.var as var_module
from nar_bench.errors import NarBenchError
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.nn.transformer import TransformerConfig
from nar_bench.paradigms.nar_video import VideoNAR
from nar_bench.paradigms.par import PAR
from nar_bench.registry import PARADIGMS
from tests.conftest import on_grid
from tests.test_var import tiny_var

CFG = TransformerConfig(dim=32, n_layers=1, n_heads=4, vocab_size=16, num_classes=3)


def tiny(name: str):
    """The paradigm's test kit model (ar, nar: 4 x 4; par: 4 x 4 in 4 regions; nar_video: 2 x 4 x 4)."""
    return PARADIGMS[name].tiny()[0]


def par_8x8():
    return PAR(*on_grid(CFG, (8, 8)), PAR.Options(regions=4))


def llamagen_official_loop(num_tokens: int, interval: int) -> list[bool]:
    """LlamaGen: prefill (token 0) guided; then loop i = 0 .. N-2 over the rest, guidance switched
    off for good once i > cfg_interval."""
    flags, on = [True], True
    for i in range(num_tokens - 1):
        if interval > -1 and i > interval:
            on = False
        flags.append(on)
    return flags


def nar_official_loop(step_sizes: list[int], interval: int) -> list[bool]:
    """NAR (images and video): prefill guided; a running count of generated tokens starts at 1 and,
    before each later step, guidance goes off for good once the count exceeds cfg_interval."""
    flags, on, generated = [True], True, step_sizes[0]
    for size in step_sizes[1:]:
        if interval > -1 and generated > interval:
            on = False
        flags.append(on)
        generated += size
    return flags


def par_official_loop(regions: int, num_tokens: int, interval: int) -> list[bool]:
    """PAR: prefill guided; the sequential loop (i = 0 .. n-2) over the other initial tokens; then
    a second loop with its own flag and a counter i = 0, n, 2n, .. over the parallel steps."""
    flags, on = [True], True
    for i in range(regions - 1):
        if interval > -1 and i > interval:
            on = False
        flags.append(on)
    on = True
    for i in range(0, num_tokens - regions, regions):
        if interval > -1 and i > interval:
            on = False
        flags.append(on)
    return flags


# The paradigms whose official sampler has a cfg_interval: how that loop guides a model's steps.
OFFICIAL_LOOPS = {
    "ar": lambda model, interval: llamagen_official_loop(model.num_tokens, interval),
    "nar": lambda model, interval: nar_official_loop([len(idx) for idx in model.schedule()], interval),
    "nar_video": lambda model, interval: nar_official_loop([len(idx) for idx in model.schedule()], interval),
    "par": lambda model, interval: par_official_loop(model.num_regions, model.num_tokens, interval),
}


def official_reference(name: str, model, interval: int) -> list[bool]:
    return OFFICIAL_LOOPS[name](model, interval)


def guided_tokens(model, flags: list[bool]) -> list[int]:
    """Sorted raster indices of the tokens produced at guided steps."""
    return sorted(torch.cat([idx for idx, on in zip(model.schedule(), flags, strict=True) if on]).tolist())


def official(interval: int) -> SamplingConfig:
    return SamplingConfig(cfg_scale=2.0, cfg_interval=interval, cfg_schedule="official")


@pytest.mark.parametrize("name, make", [*((name, lambda name=name: tiny(name)) for name in OFFICIAL_LOOPS),
                                        ("par", par_8x8)], ids=[*OFFICIAL_LOOPS, "par_8x8"])
def test_official_schedule_matches_the_official_loop_for_every_interval(name, make):
    model = make()
    for interval in range(-1, model.num_tokens + 2):
        assert model.guided_steps(official(interval)) == official_reference(name, model, interval), interval


@pytest.mark.parametrize("name", sorted(PARADIGMS))
def test_every_paradigm_has_its_official_loop_here_or_no_official_interval(name):
    model = tiny(name)
    if model.official_guided_steps(0) is None:
        with pytest.raises(NarBenchError, match="official sampler has no cfg_interval"):
            model.guided_steps(official(2))
        assert model.guided_steps(official(-1)) == [True] * model.num_steps
    else:
        assert name in OFFICIAL_LOOPS, f"add the official sampler loop of '{name}' to OFFICIAL_LOOPS"


@pytest.mark.parametrize("name", sorted(PARADIGMS))
def test_steps_schedule_guides_the_first_n_steps_in_every_paradigm(name):
    model = tiny(name)
    for interval in (0, 1, 3, model.num_steps):
        flags = model.guided_steps(SamplingConfig(cfg_interval=interval))
        assert flags == [s < interval for s in range(model.num_steps)]


def test_llamagen_value_guides_n_plus_two_tokens():
    model = tiny("ar")  # 4 x 4, one token a step
    for interval in (0, 3, 13):
        assert guided_tokens(model, model.guided_steps(official(interval))) == list(range(interval + 2))
    assert all(model.guided_steps(official(14)))  # 14 + 2 = 16 tokens: the whole grid


def test_nar_value_counts_generated_tokens():
    model = tiny("nar")  # 4 x 4: steps of 1, 2, 3, 4, 3, 2, 1 tokens
    assert guided_tokens(model, model.guided_steps(official(0))) == [0]
    # 1 token before step 1 <= 1; 3 before step 2 > 1
    assert guided_tokens(model, model.guided_steps(official(1))) == [0, 1, 4]
    # 6 tokens before step 3 > 5: steps 0-2 = tokens with h + w <= 2
    assert guided_tokens(model, model.guided_steps(official(5))) == [0, 1, 2, 4, 5, 8]
    assert model.guided_steps(official(6)) == [True] * 4 + [False] * 3


def test_nar_video_value_counts_generated_tokens():
    model = VideoNAR(*on_grid(CFG, (2, 3, 3)))  # steps of 1, 3, 5, 5, 3, 1 tokens
    assert [len(idx) for idx in model.schedule()] == [1, 3, 5, 5, 3, 1]
    assert model.guided_steps(official(3)) == [True, True, False, False, False, False]  # 4 before step 2 > 3
    assert model.guided_steps(official(4)) == [True, True, True, False, False, False]
    assert len(guided_tokens(model, model.guided_steps(official(4)))) == 9


def test_par_counter_restarts_in_the_parallel_phase():
    model = par_8x8()  # 4 regions of 16: steps 0-3 sequential, 4-18 parallel (4 tokens each)
    flags = model.guided_steps(official(0))
    assert [s for s, on in enumerate(flags) if on] == [0, 1, 4]  # guidance comes back for the first parallel step
    assert [s for s, on in enumerate(model.guided_steps(official(2))) if on] == [0, 1, 2, 3, 4]
    assert [s for s, on in enumerate(model.guided_steps(official(9))) if on] == [0, 1, 2, 3, 4, 5, 6]
    assert len(guided_tokens(model, model.guided_steps(official(9)))) == 4 + 3 * 4


def test_var_official_sampler_has_no_interval():
    var = tiny_var()
    with pytest.raises(NarBenchError, match="official sampler has no cfg_interval"):
        var.guided_steps(official(2))
    assert var.guided_steps(official(-1)) == [True] * var.num_steps
    assert var.guided_steps(SamplingConfig(cfg_interval=2)) == [True, True] + [False] * (var.num_steps - 2)


@pytest.mark.parametrize("name", OFFICIAL_LOOPS)  # the engine's paradigms; VAR and MaskGIT below
def test_generate_guides_exactly_the_scheduled_steps(name, monkeypatch):
    model = tiny(name)
    seen = []
    sample_step = engine.sample_step

    def record(logits, sampling, guided, generator=None, scale=None):
        seen.append(guided)
        return sample_step(logits, sampling, guided, generator, scale)

    monkeypatch.setattr(engine, "sample_step", record)
    sampling = official(2)
    model.generate(torch.tensor([0, 1]), sampling)
    assert seen == model.guided_steps(sampling) == official_reference(name, model, 2)


def test_var_generate_guides_the_scheduled_steps(monkeypatch):
    from tests.test_msvq import tiny_msvq

    var = tiny_var(tokenizer=tiny_msvq())
    seen = []
    sample_step = var_module.sample_step
    monkeypatch.setattr(var_module, "sample_step", lambda logits, s, guided, g=None, scale=None:
                        seen.append(guided) or sample_step(logits, s, guided, g, scale))
    var.generate(torch.tensor([0, 1]), SamplingConfig(cfg_scale=2.0, cfg_interval=1))
    assert seen == [True] + [False] * (var.num_steps - 1)


@pytest.mark.parametrize("name", sorted(PARADIGMS))
@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_scale_at_most_one_decodes_like_no_guidance_without_doubling(name, scale):
    model = tiny(name).eval()
    rows = []  # batch rows of every decoding step's logits (2B under CFG)
    step_logits = model.step_logits

    def record(step, fed):
        logits = step_logits(step, fed)
        rows.append(logits.shape[0])
        return logits

    model.step_logits = record
    labels = torch.tensor([0, 2])
    low = model.generate(labels, SamplingConfig(cfg_scale=scale, top_k=4), torch.Generator().manual_seed(3))
    plain = model.generate(labels, SamplingConfig(cfg_scale=1.0, top_k=4), torch.Generator().manual_seed(3))
    assert rows == [2] * (2 * model.num_steps) and torch.equal(low, plain)


def test_official_schedule_is_validated_with_the_config():
    from nar_bench.config import load_config

    with pytest.raises(NarBenchError, match="cfg_schedule='token'"):
        load_config(overrides=["eval.sampling.cfg_schedule=token"])
    assert load_config(overrides=["eval.sampling.cfg_schedule=official"]).eval.sampling.cfg_schedule == "official"


def test_maskgit_guides_the_first_interval_steps_and_has_no_official_interval(monkeypatch):
    import nar_bench.paradigms.maskgit as maskgit_module

    model = maskgit_module.MaskGIT(*on_grid(CFG, (4, 4)), maskgit_module.MaskGITOptions(steps=4))
    seen = []
    guided_logits = maskgit_module.guided_logits
    monkeypatch.setattr(maskgit_module, "guided_logits", lambda logits, s, guided, scale=None:
                        seen.append(guided) or guided_logits(logits, s, guided, scale))
    model.generate(torch.tensor([0, 1]), SamplingConfig(cfg_scale=2.0, cfg_interval=1))
    assert seen == [True, False, False, False]
    with pytest.raises(NarBenchError, match="official sampler has no cfg_interval"):
        model.guided_steps(official(2))
