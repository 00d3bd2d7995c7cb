"""What an evaluation will need, checked before anything trains or samples."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nar_bench.checkpoints import load_file
from nar_bench.errors import NarBenchError
from nar_bench.registry import FEATURE_EXTRACTORS


def check_eval_inputs(cfg: DictConfig) -> None:
    """What evaluation (nar_bench.run.evaluate) will need, checked before training: a known feature
    extractor that fits the data, readable Inception weights, the reference images' folder."""
    import nar_bench.metrics  # noqa: F401  (registers the feature extractors; here: torch-fidelity loads slowly)
    from nar_bench.metrics.cache import cache_root

    ev = cfg.eval
    if ev.extractor not in FEATURE_EXTRACTORS:
        raise NarBenchError(f"unknown eval.extractor '{ev.extractor}'; choose one of: "
                            f"{', '.join(sorted(FEATURE_EXTRACTORS))}")
    if ev.extractor == "domain" and cfg.data.name != "shapes":
        raise NarBenchError(f"eval.extractor=domain is the classifier of the synthetic shapes data, but data.name="
                            f"'{cfg.data.name}'; use eval.extractor=inception (see experiments/ablation_heads.yaml)")
    if ev.extractor == "inception":
        options = OmegaConf.to_container(ev.extractor_options, resolve=True)
        extractor = FEATURE_EXTRACTORS["inception"](cache_root(), **options)  # raises if the file is missing
        load_file(extractor.weights_path, download="replace it with the torch-fidelity InceptionV3 weights "
                                                   "(pt_inception-2015-12-05-6726825d.pth)")
    reference = ev.reference_data or cfg.data.name
    root = ev.reference_root or cfg.data.root
    if reference == "imagefolder" and (not root or not Path(root).is_dir()):
        raise NarBenchError(f"eval reference images: folder '{root}' not found; set eval.reference_root "
                            "(or data.root) to the image folder the samples are compared with")
