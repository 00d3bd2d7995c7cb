import pytest
from omegaconf import OmegaConf

from nar_bench.config import expand_sweep, load_config
from nar_bench.errors import NarBenchError
from nar_bench.paradigms.model_config import DROPOUTS, check_model, model_dims, transformer_config
from nar_bench.registry import PARADIGMS


def test_yaml_and_dotlist_overrides_merge_over_schema_defaults():
    cfg = load_config("experiments/demo.yaml", ["model.size=B", "trainer.max_steps=10", "eval.sampling.top_k=5"])
    assert cfg.model.size == "B" and cfg.trainer.max_steps == 10 and cfg.eval.sampling.top_k == 5
    assert cfg.data.name == "shapes" and list(cfg.optim.betas) == [0.9, 0.95]  # YAML value, schema default
    assert model_dims(cfg.model) == (768, 12, 12)


def test_unknown_key_names_the_key_and_the_valid_ones():
    with pytest.raises(NarBenchError) as err:
        load_config("experiments/demo.yaml", ["trainer.max_stepz=3"])
    assert "max_stepz" in str(err.value) and "max_steps" in str(err.value)


def test_unknown_key_in_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  paradigm: ar\n  sise: B\n")
    with pytest.raises(NarBenchError, match="sise.*valid keys here: .*size"):
        load_config(bad)


def test_wrong_type_and_unknown_names():
    with pytest.raises(NarBenchError, match="max_steps"):
        load_config(None, ["trainer.max_steps=lots"])
    # the model section is the paradigm's to check (before anything is built)
    with pytest.raises(NarBenchError, match="unknown paradigm 'nope'; choose one of: .*ar"):
        check_model(load_config(None, ["model.paradigm=nope"]).model)
    with pytest.raises(NarBenchError, match="unknown model.size 'Q'"):
        check_model(load_config(None, ["model.size=Q"]).model)
    with pytest.raises(NarBenchError, match="not found"):
        load_config("experiments/missing.yaml")


def test_paradigm_options_are_validated():
    with pytest.raises(NarBenchError, match="model.options.*valid options"):
        check_model(load_config(None, ["model.paradigm=ar", "model.options.foo=1"]).model)


def test_sweep_expansion_variants_grid_seeds():
    cfg = OmegaConf.merge(load_config(None), {"sweep": {
        "variants": [{"name": "a", "overrides": ["model.size=tiny"]}, {"name": "b", "overrides": ["model.size=small"]}],
        "grid": {"data.batch_size": [8, 16]},
        "seeds": [0, 1],
    }})
    runs = expand_sweep(cfg)
    assert len(runs) == 2 * 2 * 2
    names = [name for name, _ in runs]
    assert names[0] == "a/batch_size=8/seed=0" and len(set(names)) == 8
    b16s1 = dict(runs)["b/batch_size=16/seed=1"]
    assert b16s1.model.size == "small" and b16s1.data.batch_size == 16 and b16s1.seed == 1
    assert not b16s1.sweep.variants  # a run does not carry the sweep again


@pytest.mark.parametrize("paradigm", sorted(PARADIGMS))
def test_unset_dropouts_default_to_the_paradigms_released_recipe(paradigm):
    """Each paradigm's recipe (``default_dropouts``) is pinned in its own test file (issue 13)."""
    recipe = PARADIGMS[paradigm].default_dropouts
    cfg = transformer_config(load_config(overrides=[f"model.paradigm={paradigm}"]).model, 16, 4)
    assert {key: getattr(cfg, key) for key in DROPOUTS} == recipe
    # an explicit value wins over the recipe
    cfg = transformer_config(load_config(overrides=[f"model.paradigm={paradigm}", "model.resid_dropout=0.3"]).model,
                             16, 4)
    assert cfg.resid_dropout == 0.3 and {key: getattr(cfg, key) for key in DROPOUTS if key != "resid_dropout"} == {
        key: value for key, value in recipe.items() if key != "resid_dropout"}


def test_var_blocks_built_from_the_config_have_no_dropout():
    from torch import nn

    from nar_bench.paradigms import build_paradigm
    from nar_bench.tokenizers import build_tokenizer

    cfg = load_config("experiments/var_demo.yaml")
    var = build_paradigm(cfg, build_tokenizer(cfg).code_space, 16)
    drops = [m.p for m in var.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(p == 0.0 for p in drops)
    assert var.model_cfg.class_dropout == 0.1
