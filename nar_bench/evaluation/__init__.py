"""Evaluation as a library: samples -> ``SampleStore`` -> features -> metrics.

- ``samples``: class-balanced, per-sample-seeded generation into resumable .npz shards.
- ``scoring``: one ``Scorer`` per protocol (ADM reference batch, dataset images, video FVD),
  chosen by ``scorer_for(cfg)``; each checks its inputs before anything is generated.
- ``protocol``: ``evaluate`` (a model in memory: sweeps, end of training) and
  ``evaluate_checkpoint`` (``nar-bench evaluate``: one MLflow run and eval.json).

Metric names, directions and display order come from ``nar_bench.metrics.registry``.
"""

from nar_bench.evaluation.protocol import evaluate, evaluate_checkpoint, load_generator
from nar_bench.evaluation.scoring import check_eval_inputs, scorer_for

__all__ = ["check_eval_inputs", "evaluate", "evaluate_checkpoint", "load_generator", "scorer_for"]
