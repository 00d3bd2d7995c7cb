"""The MLflow store as nar-bench opens it: experiments open in MLflow 3's model-training view."""

from mlflow.tracking import MlflowClient

from nar_bench.config import load_config
from nar_bench.tracking.mlflow import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, experiment_id
from tests.conftest import tracking_overrides


def tracking(tmp_path, experiment: str = "test"):
    return load_config(None, tracking_overrides(tmp_path, experiment)).tracking


def test_experiments_are_tagged_model_training_and_untagged_ones_get_the_tag(tmp_path):
    assert EXPERIMENT_KIND_TAG == "mlflow.experimentKind" and EXPERIMENT_KIND == "custom_model_development"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    old = client.create_experiment("old")  # as nar-bench made them before, or by hand
    genai = client.create_experiment("genai", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    ids = {name: experiment_id(tracking(tmp_path, name)) for name in ("new", "old", "genai")}
    assert ids["old"] == old and ids["genai"] == genai
    kinds = {name: client.get_experiment(i).tags.get(EXPERIMENT_KIND_TAG) for name, i in ids.items()}
    assert kinds == {"new": EXPERIMENT_KIND, "old": EXPERIMENT_KIND, "genai": "genai_development"}  # a set kind stays

