import pytest
import torch

from nar_bench.errors import NarBenchError
from nar_bench.nn.sampling import (
    SamplingConfig,
    filter_logits,
    guide,
    guided_steps,
    sample,
    sample_step,
    with_null_class,
)


def test_guide_formula():
    cond, uncond = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    assert torch.allclose(guide(torch.cat([cond, uncond]), 4.0), uncond + 4.0 * (cond - uncond))


def test_null_class_appended():
    assert torch.equal(with_null_class(torch.tensor([3, 1]), 10), torch.tensor([3, 1, 10, 10]))


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.45)).tolist() == [[True, False, False, False]]


def test_sampling_follows_the_distribution_and_is_seeded():
    probs = torch.tensor([0.7, 0.2, 0.1])
    logits = probs.log().expand(20000, 3)
    draws = sample(logits, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).float() / len(draws)
    assert torch.allclose(freq, probs, atol=0.02)
    assert torch.equal(draws, sample(logits, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(sample(logits[:2], temperature=0), torch.zeros(2, dtype=torch.long))


def test_sample_step_batches_all_tokens_and_drops_guidance_when_told():
    logits = torch.randn(4, 5, 11)  # 2B rows (CFG), 5 tokens in the step
    cfg = SamplingConfig(cfg_scale=3.0, cfg_interval=2, temperature=0)
    flags = guided_steps(cfg, 4)
    assert flags == [True, True, False, False]  # steps 0 .. cfg_interval - 1
    guided = sample_step(logits, cfg, flags[1])
    assert guided.shape == (2, 5) and torch.equal(guided, guide(logits, 3.0).argmax(-1))
    assert torch.equal(sample_step(logits, cfg, flags[2]), logits[:2].argmax(-1))  # guidance off from cfg_interval
    assert torch.equal(sample_step(logits, cfg, flags[0], scale=1.5), guide(logits, 1.5).argmax(-1))  # VAR's ramp


def test_top_k_candidate_draw_matches_the_filtered_distribution():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().expand(40000, 4)
    gen = torch.Generator().manual_seed(1)
    freq = torch.bincount(sample(logits, top_k=2, generator=gen), minlength=4).float() / 40000
    assert torch.allclose(freq, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.01)
    freq = torch.bincount(sample(logits, top_k=3, top_p=0.7, generator=gen), minlength=4).float() / 40000
    assert torch.allclose(freq, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.01)
    hot = torch.tensor([0.0, 5.0, 0.0, 0.0]).expand(100, 4)
    assert torch.equal(sample(hot, temperature=0.01, top_k=3), torch.ones(100, dtype=torch.long))


# --- CFG scale and interval (issue 13) ----------------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.0, -2.0])
def test_scale_at_most_one_means_no_guidance_and_no_batch_doubling(scale):
    """The official loops guide only when cfg_scale > 1; anything else samples the conditional
    logits of an undoubled batch."""
    cfg = SamplingConfig(cfg_scale=scale, cfg_interval=3, temperature=0)
    assert not cfg.uses_cfg and guided_steps(cfg, 5) == [False] * 5
    logits = torch.randn(2, 3, 7)  # B rows only
    assert torch.equal(sample_step(logits, cfg, True), logits.argmax(-1))
    assert SamplingConfig(cfg_scale=1.01).uses_cfg


def test_cfg_interval_counts_steps_and_minus_one_guides_all():
    assert guided_steps(SamplingConfig(cfg_interval=-1), 3) == [True] * 3
    assert guided_steps(SamplingConfig(cfg_interval=0), 3) == [False] * 3
    assert guided_steps(SamplingConfig(cfg_interval=5), 3) == [True] * 3


def test_bad_schedule_interval_and_missing_official_rule_name_the_fix():
    with pytest.raises(NarBenchError, match="cfg_schedule='tokens'.*steps, official"):
        SamplingConfig(cfg_schedule="tokens")
    with pytest.raises(NarBenchError, match="cfg_interval=-2"):
        SamplingConfig(cfg_interval=-2)
    with pytest.raises(NarBenchError, match="official sampler has no cfg_interval.*cfg_schedule=steps"):
        guided_steps(SamplingConfig(cfg_interval=2, cfg_schedule="official"), 4, lambda n: None)
    assert guided_steps(SamplingConfig(cfg_schedule="official"), 4, lambda n: None) == [True] * 4  # -1: no interval


def exact_guided_probs(cond, uncond, scale, top_k, top_p):
    """fp64 reference of the sampled distribution: guide, keep the top-k, then the top-p nucleus
    (the token crossing p is kept), renormalise."""
    guided = uncond.double() + scale * (cond.double() - uncond.double())
    values, order = guided.sort(descending=True)
    probs = values[:top_k].softmax(0)
    keep = (probs.cumsum(0) - probs) <= top_p
    probs = torch.where(keep, probs, 0.0)
    out = torch.zeros_like(guided)
    out[order[:top_k]] = probs / probs.sum()
    return out


def test_guided_candidate_sampling_matches_exact_probabilities_in_bf16():
    torch.manual_seed(3)
    vocab, rows, scale = 12, 60000, 2.0
    cond, uncond = (torch.randn(vocab) * 1.5).bfloat16(), (torch.randn(vocab) * 1.5).bfloat16()
    logits = torch.cat([cond.expand(rows, 1, vocab), uncond.expand(rows, 1, vocab)])  # (2B, n=1, V)
    gen = torch.Generator().manual_seed(0)
    for top_k, top_p in ((5, 1.0), (8, 0.8)):
        draws = sample_step(logits, SamplingConfig(cfg_scale=scale, top_k=top_k, top_p=top_p), True, gen)
        assert draws.shape == (rows, 1)
        freq = torch.bincount(draws.flatten(), minlength=vocab).double() / rows
        exact = exact_guided_probs(cond, uncond, scale, top_k, top_p)
        assert (freq[exact == 0] == 0).all()  # nothing outside the top-k / nucleus is ever drawn
        assert torch.allclose(freq, exact, atol=0.01), (freq, exact)
