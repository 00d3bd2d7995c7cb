"""The MLflow store as nar-bench opens it: experiments open in MLflow 3's model-training view, and a
store written by a newer MLflow client is reported in one line."""

import contextlib
import shutil
import sqlite3

import pytest
from mlflow.tracking import MlflowClient

from nar_bench.cli import main
from nar_bench.config import load_config
from nar_bench.errors import NarBenchError
from nar_bench.tracking.mlflow import experiment_id
from nar_bench.tracking.names import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from tests.conftest import tracking_overrides


def tracking(tmp_path, experiment: str = "test"):
    return load_config(None, tracking_overrides(tmp_path, experiment)).tracking


def store_at_revision(tmp_path, revision: str) -> None:
    """tmp_path/mlruns.db: a store of this client's schema that records ``revision``. Made elsewhere and
    copied, since MLflow checks the schema of a URI once per process."""
    made = tmp_path / "made" / "mlruns.db"
    MlflowClient(f"sqlite:///{made}").search_experiments()
    shutil.copy(made, tmp_path / "mlruns.db")
    with contextlib.closing(sqlite3.connect(tmp_path / "mlruns.db")) as con, con:
        con.execute("UPDATE alembic_version SET version_num = ?", (revision,))


def test_experiments_are_tagged_model_training_and_untagged_ones_get_the_tag(tmp_path):
    assert EXPERIMENT_KIND_TAG == "mlflow.experimentKind" and EXPERIMENT_KIND == "custom_model_development"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    old = client.create_experiment("old")  # as nar-bench made them before, or by hand
    genai = client.create_experiment("genai", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    ids = {name: experiment_id(tracking(tmp_path, name)) for name in ("new", "old", "genai")}
    assert ids["old"] == old and ids["genai"] == genai
    kinds = {name: client.get_experiment(i).tags.get(EXPERIMENT_KIND_TAG) for name, i in ids.items()}
    assert kinds == {"new": EXPERIMENT_KIND, "old": EXPERIMENT_KIND, "genai": "genai_development"}  # a set kind stays


def test_a_store_written_by_a_newer_mlflow_is_one_line(tmp_path, capsys):
    store_at_revision(tmp_path, "0123456789ab")  # a revision from the future
    with pytest.raises(NarBenchError, match="written by a newer MLflow .*schema revision 0123456789ab is unknown"):
        experiment_id(tracking(tmp_path))
    capsys.readouterr()  # MLflow's log of making the store
    assert main(["report", "experiments/demo.yaml", *tracking_overrides(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "written by a newer MLflow" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_store_at_a_known_older_revision_keeps_mlflows_own_error(tmp_path):
    store_at_revision(tmp_path, "451aebb31d03")  # the first revision of MLflow's migrations
    with pytest.raises(Exception, match="out-of-date database schema") as err:
        experiment_id(tracking(tmp_path))
    assert not isinstance(err.value, NarBenchError)
