"""PAR: step counts, region schedule, mask, cached decoding == full forward, CFG, training,
and the official checkpoint converter. Tiny models, CPU, fp32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nar_bench.checkpoints import PAR_TRANSITION_KEY, load_par_checkpoint
from nar_bench.config import load_config
from nar_bench.errors import NarBenchError
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.nn.transformer import TransformerConfig
from nar_bench.paradigms.base import step_of_positions
from nar_bench.paradigms.model_config import DROPOUTS, paradigm_options
from nar_bench.paradigms.par import PAR
from nar_bench.paradigms.raster_ar import RasterAR
from nar_bench.registry import PARADIGMS
from tests.conftest import on_grid

VOCAB, CLASSES = 16, 4


def tiny(grid=(4, 4), regions=4, dropout=0.1, seed=0) -> PAR:
    torch.manual_seed(seed)
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=2, vocab_size=VOCAB, num_classes=CLASSES,
                            token_dropout=dropout, resid_dropout=dropout, ffn_dropout=dropout, class_dropout=dropout)
    model = PAR(*on_grid(cfg, grid), PAR.Options(regions=regions))
    nn.init.normal_(model.backbone.output.weight, std=0.5)  # LlamaGen zero-initialises it
    return model


def test_registered_and_configured_by_name():
    assert PARADIGMS["par"] is PAR
    cfg = load_config(None, ["model.paradigm=par", "model.options.regions=16"])
    assert paradigm_options(cfg.model) == PAR.Options(regions=16)


@pytest.mark.parametrize("grid, regions, steps", [
    ((16, 16), 4, 67), ((16, 16), 16, 31), ((24, 24), 4, 147), ((24, 24), 16, 51),
    ((8, 8), 4, 19), ((8, 8), 16, 19), ((4, 4), 4, 7), ((4, 8), 4, 11),
])
def test_step_count(grid, regions, steps):
    model = tiny(grid, regions)
    assert model.num_steps == steps == regions + grid[0] * grid[1] // regions - 1
    sched = model.schedule()
    assert [len(s) for s in sched] == [1] * regions + [regions] * (steps - regions)
    step_of_positions(sched, model.num_tokens)  # every token exactly once (raises otherwise)
    assert torch.cat(sched).sort().values.equal(torch.arange(model.num_tokens))


def test_schedule_is_region_parallel():
    # 4x4 grid, 2x2 regions of 2x2 tokens: regions 0..3 = {0,1,4,5}, {2,3,6,7}, {8,9,12,13}, {10,11,14,15}
    sched = [s.tolist() for s in tiny((4, 4), 4).schedule()]
    assert sched == [[0], [2], [8], [10], [1, 3, 9, 11], [4, 6, 12, 14], [5, 7, 13, 15]]


@pytest.mark.parametrize("grid, regions", [((16, 16), 3), ((16, 16), 9), ((16, 16), 0), ((4, 4), 16), ((2, 4, 4), 4)])
def test_bad_regions_raise(grid, regions):
    with pytest.raises(NarBenchError, match="regions"):
        tiny(grid, regions)


def test_train_mask_matches_schedule():
    # 4x4 / 4 regions, one condition token. Sequence: [cls, r0, r1, r2, (r3 t1 t2 t3), group 1, group 2]
    group = torch.tensor([-1, 0, 1, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5])
    expected = group[None, :] <= group[:, None]
    mask = tiny((4, 4), 4).mask
    assert mask.equal(expected)
    assert mask[:, 0].all()  # condition visible to every token
    assert mask[4:8, 4:8].all() and mask[8:12, 8:12].all()  # bidirectional inside a parallel chunk
    assert not mask[1:4, 4:].any() and not mask[4:8, 8:].any()  # causal across groups


def test_teacher_forcing_does_not_leak():
    """Changing the token at raster position p leaves the logits of every token decoded at or
    before p's step unchanged (they are predicted from inputs fed before p)."""
    model = tiny((4, 4), 4).eval()
    step = step_of_positions(model.schedule(), model.num_tokens)
    tokens, labels = torch.randint(0, VOCAB, (2, 16)), torch.tensor([1, 2])
    with torch.no_grad():
        base = model(tokens, labels)
        for p in (2, 10, 1, 14):  # initial tokens of regions 1 and 3, parallel tokens
            changed = tokens.clone()
            changed[:, p] = (changed[:, p] + 1) % VOCAB
            diff = (model(changed, labels) - base).abs().amax(dim=(0, 2))
            assert (diff[step <= step[p]] == 0).all()
            assert (diff[step > step[p]] > 0).any()


def test_one_region_equals_raster_ar():
    par = tiny((4, 4), 1).eval()
    ar = RasterAR(*on_grid(par.model_cfg, (4, 4))).eval()
    ar.load_state_dict({k: v for k, v in par.state_dict().items() if k != "transition_tokens"})
    tokens, labels = torch.randint(0, VOCAB, (2, 16)), torch.tensor([0, 3])
    with torch.no_grad():
        torch.testing.assert_close(par(tokens, labels), ar(tokens, labels), atol=1e-5, rtol=0)


@pytest.mark.parametrize("grid, regions", [((4, 4), 4), ((8, 8), 16)])
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_cached_decoding_equals_full_forward(grid, regions, cfg_scale):
    """Logits seen at each cached decoding step == teacher-forced logits on the decoded codes
    (conditional and, with CFG, null-class rows), fp32, atol 1e-5."""
    model = tiny(grid, regions)
    recorded = []
    step_logits = model.step_logits
    model.step_logits = lambda step, fed: recorded.append(step_logits(step, fed)) or recorded[-1]
    labels = torch.tensor([0, 3, 1])
    codes = model.generate(labels, SamplingConfig(cfg_scale=cfg_scale), torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        cond = model(codes.flatten(1), labels)
        uncond = model(codes.flatten(1), torch.full_like(labels, CLASSES))
    assert len(recorded) == model.num_steps
    for idx, got in zip(model.schedule(), recorded, strict=True):
        torch.testing.assert_close(got[:3], cond[:, idx], atol=1e-5, rtol=0)
        if cfg_scale != 1.0:
            torch.testing.assert_close(got[3:], uncond[:, idx], atol=1e-5, rtol=0)
        else:
            assert got.shape[0] == 3


@pytest.mark.parametrize("cfg_scale, batch", [(1.0, 2), (2.0, 4)])
def test_cfg_doubles_batch_and_transition_tokens_fed_once(cfg_scale, batch):
    model = tiny((4, 4), 4)
    fed = []
    feed = model.feed
    def recording_feed(x, rope, cache_start):
        fed.append((x.shape, rope.shape[0], cache_start))
        return feed(x, rope, cache_start)

    model.feed = recording_feed
    model.generate(torch.tensor([1, 2]), SamplingConfig(cfg_scale=cfg_scale))
    assert {shape[0] for shape, _, _ in fed} == {batch}
    # condition, 3 initial tokens alone, [last initial + 3 transition tokens], then 2 parallel groups
    assert [shape[1] for shape, _, _ in fed] == [1, 1, 1, 1, 4, 4, 4]
    assert all(shape[1] == rows for shape, rows, _ in fed)
    assert [start for _, _, start in fed] == [0, 1, 2, 3, 4, 8, 12]


def test_sampling_returns_grid_of_valid_codes():
    model = tiny((4, 8), 4)
    codes = model.generate(torch.tensor([0, 1, 2]), SamplingConfig(cfg_scale=1.5, top_k=5, top_p=0.9))
    assert codes.shape == (3, 4, 8) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < VOCAB
    assert model.training  # generate restores the mode


def test_train_step_reduces_loss():
    model = tiny((4, 4), 4, dropout=0.0)
    tokens, labels = torch.randint(0, VOCAB, (8, 16), generator=torch.Generator().manual_seed(1)), torch.arange(8) % 4
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model.loss(tokens, labels)
        opt.zero_grad()
        loss.backward()
        assert model.transition_tokens.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def official_state(model: PAR) -> dict[str, torch.Tensor]:
    """What PAR's released gpt.py state dict looks like for ``model``."""
    state = {k.removeprefix("backbone."): v.clone() for k, v in model.state_dict().items() if k.startswith("backbone.")}
    state[PAR_TRANSITION_KEY] = model.transition_tokens.detach().clone()
    state["freqs_cis"] = torch.zeros(3)
    return state


def test_checkpoint_round_trip(tmp_path):
    source, target = tiny((8, 8), 16, seed=1).eval(), tiny((8, 8), 16, seed=2).eval()
    path = tmp_path / "PAR-tiny-16x.pt"
    torch.save({"model": official_state(source), "steps": 10}, path)
    load_par_checkpoint(target, path)
    for key, value in source.state_dict().items():
        assert target.state_dict()[key].equal(value), key
    tokens, labels = torch.randint(0, VOCAB, (2, 64)), torch.tensor([0, 1])
    with torch.no_grad():
        assert target(tokens, labels).equal(source(tokens, labels))


def test_checkpoint_mismatch_errors(tmp_path):
    model = tiny((8, 8), 4)
    path = tmp_path / "par.pt"

    state = official_state(model)
    del state[PAR_TRANSITION_KEY]
    torch.save(state, path)
    with pytest.raises(NarBenchError, match="no transition tokens under 'spe_tok_embeddings"):
        load_par_checkpoint(model, path)

    torch.save(official_state(tiny((8, 8), 16)), path)
    with pytest.raises(NarBenchError, match="16 regions.*regions=4"):
        load_par_checkpoint(model, path)

    state = official_state(model)
    del state["layers.1.attention.wo.weight"]
    state["medusa_norm.weight"] = torch.ones(32)
    state["tok_embeddings.weight"] = torch.zeros(VOCAB + 1, 32)
    torch.save(state, path)
    with pytest.raises(NarBenchError, match=r"missing keys \(1\): layers\.1\.attention\.wo\.weight.*"
                                            r"unexpected keys \(1\): medusa_norm\.weight.*"
                                            r"tok_embeddings\.weight \(17, 32\) vs \(16, 32\)"):
        load_par_checkpoint(model, path)

    with pytest.raises(NarBenchError, match="not found"):
        load_par_checkpoint(model, tmp_path / "missing.pt")


def test_checkpoint_transition_key_override(tmp_path):
    source, target = tiny((4, 4), 4, seed=1), tiny((4, 4), 4, seed=2)
    state = official_state(source)
    state["my_transition"] = state.pop(PAR_TRANSITION_KEY)
    torch.save({"state_dict": state}, tmp_path / "par.pt")
    load_par_checkpoint(target, tmp_path / "par.pt", transition_key="my_transition")
    assert target.transition_tokens.equal(source.transition_tokens)



def test_test_kit_and_released_dropout_recipe():
    """The registry-wide tests run on ``PAR.tiny()``; here its step count is pinned. Unset dropouts (token,
    resid, ffn, class) are the released recipe: LlamaGen's GPT, which PAR trains on: 0.1 on tokens, residuals,
    FFN and labels."""
    assert PAR.tiny()[0].num_steps == 7  # 4 x 4 grid, 4 regions: 4 + 16 / 4 - 1
    assert tuple(PAR.default_dropouts[key] for key in DROPOUTS) == (0.1, 0.1, 0.1, 0.1)
