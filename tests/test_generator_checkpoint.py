"""model.checkpoint: the generator starts from official weights (every paradigm with an official layout) or from
a nar-bench Lightning checkpoint; mismatches are one clear error; reloading a trained run does not
need the starting file any more."""


import pytest
import torch
from omegaconf import OmegaConf

from nar_bench.checkpoints import key_map, to_official
from nar_bench.cli import main
from nar_bench.config import load_config
from nar_bench.lit.module import GeneratorModule
from nar_bench.registry import PARADIGMS
from tests.conftest import tracking_overrides

TINY = ["model.size=tiny", "data.image_size=16", "data.grid_size=4", "data.batch_size=8", "data.num_val=16",
        "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
        "eval.samples_per_class=1"]
WITH_LAYOUT = sorted(name for name, cls in PARADIGMS.items() if cls.official_layout is not None)
CLASSES = 16  # shapes



def generator(seed: int, *overrides: str) -> GeneratorModule:
    torch.manual_seed(seed)
    return GeneratorModule(load_config("experiments/demo.yaml", [*TINY, *overrides]), CLASSES)


@pytest.mark.parametrize("paradigm", WITH_LAYOUT)
def test_official_layout_file_becomes_the_starting_weights(tmp_path, paradigm):
    overrides = PARADIGMS[paradigm].tiny_dotlist()  # the paradigm's test kit
    path = tmp_path / f"{paradigm}.pt"
    torch.save({"model": to_official(generator(1, *overrides).paradigm)}, path)
    official = torch.load(path)["model"]
    loaded = generator(2, *overrides, f"model.checkpoint={path}").paradigm
    fresh = generator(2, *overrides).paradigm.state_dict()
    state = loaded.state_dict()
    for ours, theirs in key_map(loaded).items():
        assert torch.equal(state[ours], official[theirs]), ours
    assert any(not torch.equal(state[k], fresh[k]) for k in state)  # loading replaced the initialisation


def test_lightning_checkpoint_loads_and_trained_runs_reload_without_the_starting_file(tmp_path):
    official = tmp_path / "nar.pt"
    torch.save({"model": to_official(generator(1, "model.paradigm=nar").paradigm)}, official)
    argv = ["train", "experiments/demo.yaml", *TINY, *tracking_overrides(tmp_path), "model.paradigm=nar"]
    assert main([*argv, f"model.checkpoint={official}"]) == 0
    (ckpt,) = (tmp_path / "runs").glob("*/checkpoints/last.ckpt")
    trained = {k.removeprefix("paradigm."): v for k, v in torch.load(ckpt)["state_dict"].items()
               if k.startswith("paradigm.")}

    official.unlink()  # the trained run no longer needs its starting weights
    reloaded = GeneratorModule.load_from_checkpoint(ckpt, map_location="cpu")
    assert reloaded.cfg.model.checkpoint == str(official)
    for key, value in reloaded.paradigm.state_dict().items():
        assert torch.equal(value, trained[key]), key

    restarted = generator(3, "model.paradigm=nar", f"model.checkpoint={ckpt}").paradigm  # fine-tune from a run
    for key, value in restarted.state_dict().items():
        assert torch.equal(value, trained[key]), key


@pytest.mark.parametrize("source, overrides, message", [
    ("nar", ["model.paradigm=ar"], "unexpected keys (9): medusa_norm.weight, medusa_output.weight"),
    ("ar", ["model.paradigm=ar", "model.size=small"],
     "looks like a LlamaGen GPT (no vertical head) of model.size=tiny"),
    ("par", ["model.paradigm=par", "model.options.regions=16", "data.grid_size=8"],
     "i.e. 4 regions, but model.options.regions=16; set model.options.regions=4"),
    ("lightning", ["model.paradigm=ar"], "The run that wrote it used model.paradigm=nar model.size=tiny"),
])
def test_mismatching_checkpoint_is_one_clear_error_before_any_run(tmp_path, capsys, source, overrides, message):
    path = tmp_path / "weights.pt"
    if source == "lightning":
        module = generator(1, "model.paradigm=nar")
        state = {f"paradigm.{k}": v for k, v in module.paradigm.state_dict().items()}
        torch.save({"state_dict": state, "hyper_parameters": {"cfg": OmegaConf.to_container(module.cfg)}}, path)
    else:
        extra = ["model.options.regions=4"] if source == "par" else []
        torch.save(to_official(generator(1, f"model.paradigm={source}", *extra).paradigm), path)
    argv = ["train", "experiments/demo.yaml", *TINY, *tracking_overrides(tmp_path), *overrides,
            f"model.checkpoint={path}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns.db").exists()
