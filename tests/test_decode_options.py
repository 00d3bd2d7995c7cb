"""Decode-only options (``Paradigm.decode_options``, issue #31): options that change how the weights
decode, never the weights. A run's checkpoint decodes with other values of them (``nar-bench evaluate
--ckpt ... model.options.order=zipar``), recorded in the evaluation's settings (own keyed folder); sweep
points that differ only in them share one training."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from nar_bench.cli import main
from nar_bench.config import load_config
from nar_bench.errors import NarBenchError
from nar_bench.lit.module import GeneratorModule
from nar_bench.lit.run_checkpoint import checkpoint_config, module_from_checkpoint
from nar_bench.registry import PARADIGMS
from nar_bench.run.sweep import decoding_module, training_key
from tests.conftest import tracking_overrides

pytestmark = pytest.mark.usefixtures("single_thread", "metrics_cache")

DEMO = "experiments/demo.yaml"
TINY = ["model.size=tiny", "data.image_size=16", "data.grid_size=4", "trainer.accelerator=cpu", "trainer.devices=1"]
DECLARED = {"ar": {"order", "zipar_window"}, "randar": {"order", "order_seed", "steps", "cfg_ramp", "repulsion"},
            "lpd": {"order", "steps", "repulsion", "cfg_ramp"}, "maskgit": {"order", "steps", "choice_temperature"}}


def test_decode_options_are_declared_once_per_paradigm_and_are_its_options():
    for name, cls in PARADIGMS.items():
        assert set(cls.decode_options) <= {f.name for f in fields(cls.Options)}, name
        assert set(cls.decode_options) == DECLARED.get(name, set()), name
    assert "schedule" not in PARADIGMS["maskgit"].decode_options  # its training masks follow the schedule


def run_checkpoint(tmp_path: Path, *overrides: str) -> Path:
    """A nar-bench Lightning checkpoint (what a run's last.ckpt holds) of an untrained tiny model."""
    module = GeneratorModule(load_config(DEMO, [*TINY, *overrides]), 16)
    path = tmp_path / "run" / "last.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"pytorch-lightning_version": "2.0.0", "state_dict": module.state_dict(),
                "hyper_parameters": dict(module.hparams)}, path)
    return path


def test_a_decode_only_option_overrides_the_checkpoint_a_training_option_is_still_refused(tmp_path):
    ckpt = run_checkpoint(tmp_path, "model.paradigm=maskgit", "model.options.steps=4")
    content = torch.load(ckpt, weights_only=False)
    overrides = ["model.paradigm=maskgit", "model.options.order=halton", "model.options.steps=6"]
    cfg = load_config(DEMO, [*TINY, *overrides])
    given = {key.split("=")[0]: "command-line overrides" for key in overrides}
    reconciled = checkpoint_config(cfg, content, ckpt, given)
    assert reconciled.model.options.order == "halton" and reconciled.model.options.steps == 6
    module = module_from_checkpoint(content, ckpt, reconciled.model.options)
    assert module.paradigm.options.order == "halton" and module.paradigm.num_steps == 6
    for key, value in module.state_dict().items():  # the checkpoint's weights, decoded another way
        assert torch.equal(value, content["state_dict"][key]), key
    with pytest.raises(NarBenchError, match=r"records model.options.schedule=cosine, but the config says "
                                            r"model.options.schedule=linear .*of model.options only "
                                            r"choice_temperature, order, steps may differ"):
        schedule = [*overrides, "model.options.schedule=linear"]
        checkpoint_config(load_config(DEMO, [*TINY, *schedule]), content, ckpt,
                          {**given, "model.options.schedule": "command-line overrides"})


def test_evaluate_a_raster_checkpoint_with_zipar_records_it_in_its_own_folder(tmp_path, random_inception_weights):
    from tests.test_bad_input import write_reference

    ckpt = run_checkpoint(tmp_path, "model.paradigm=ar")
    ref = write_reference(tmp_path / "ref16.npz", 16)
    base = ["evaluate", DEMO, "--ckpt", str(ckpt), "--num-samples", "16", "eval.batch_size=8", "eval.shard_size=8",
            "eval.decode_batch=4", f"eval.reference={ref}",
            f"eval.extractor_options.weights_path={random_inception_weights}", *TINY, "model.paradigm=ar",
            *tracking_overrides(tmp_path)]
    records = {}
    for extra in ([], ["model.options.order=zipar", "model.options.zipar_window=2"]):
        before = set((tmp_path / "runs").glob("*")) if (tmp_path / "runs").exists() else set()
        assert main([*base, *extra]) == 0
        (folder,) = set((tmp_path / "runs").glob("*")) - before
        records[folder] = json.loads((folder / "eval.json").read_text())["settings"]
    plain, zipar = records.values()
    assert plain["decode_options"] == {"order": "raster", "zipar_window": 8}
    assert zipar["decode_options"] == {"order": "zipar", "zipar_window": 2}
    assert plain["checkpoint_sha256"] == zipar["checkpoint_sha256"]  # one checkpoint, two keyed folders


def test_sweep_points_differing_only_in_decode_options_share_one_training():
    def key(*overrides: str) -> str:
        return training_key(load_config(DEMO, [*TINY, *overrides]))

    randar = key("model.paradigm=randar", "model.options.steps=6")
    assert randar == key("model.paradigm=randar", "model.options.order=diagonal", "model.options.steps=16",
                         "model.options.cfg_ramp=false", "eval.sampling.cfg_scale=3.0")
    assert key("model.paradigm=ar") == key("model.paradigm=ar", "model.options.order=zipar",
                                           "model.options.zipar_window=2")
    assert key("model.paradigm=maskgit") == key("model.paradigm=maskgit", "model.options.order=halton",
                                                "model.options.steps=4")
    assert key("model.paradigm=maskgit") != key("model.paradigm=maskgit", "model.options.schedule=linear")
    assert randar != key("model.paradigm=randar", "model.options.steps=6", "model.size=small")


def test_a_point_decodes_the_groups_weights_with_its_own_options():
    trained = GeneratorModule(load_config(DEMO, [*TINY, "model.paradigm=ar"]), 16)
    assert decoding_module(trained, load_config(DEMO, [*TINY, "model.paradigm=ar"])) is trained
    zipar = decoding_module(trained, load_config(DEMO, [*TINY, "model.paradigm=ar", "model.options.order=zipar",
                                                        "model.options.zipar_window=2"]))
    assert zipar.paradigm.plan is not None and zipar.paradigm.num_steps == 2 * 4 + 2 * 2
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in zipar.state_dict().items())
