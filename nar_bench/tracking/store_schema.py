"""Stores written by a newer MLflow client. MLflow refuses a SQLite store whose schema (alembic)
revision is not its newest and calls it "out-of-date", advising ``mlflow db upgrade``; when the
revision is one this client has never heard of, the store is newer than the client, and that advice
cannot help. :func:`check_store_schema` names that case in one line."""

from __future__ import annotations

import contextlib
import sqlite3
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from nar_bench.errors import NarBenchError
from nar_bench.tracking.lifecycle import sqlite_path


def store_revision(db: Path) -> str | None:
    """The alembic revision a SQLite MLflow store records (None: no file or no schema yet)."""
    if not db.is_file():
        return None
    with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as con:
        try:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.DatabaseError:  # no alembic_version table, not a database: MLflow's own error stands
            return None
    return row[0] if row else None


def known_to_this_client(revision: str) -> bool:
    """Whether the installed MLflow's migrations include ``revision``."""
    import mlflow.store
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    migrations = ScriptDirectory(str(Path(mlflow.store.__file__).parent / "db_migrations"))
    try:
        migrations.get_revision(revision)
    except CommandError:  # "Can't locate revision identified by ..."
        return False
    return True


def client_version() -> str:
    """The running MLflow's version; names both when the mlflow package's files (``mlflow.__version__``)
    and the mlflow-skinny distribution disagree (another mlflow was installed over the client)."""
    import mlflow

    try:
        skinny = version("mlflow-skinny")
    except PackageNotFoundError:
        return mlflow.__version__
    return skinny if skinny == mlflow.__version__ else f"{mlflow.__version__} (files) over mlflow-skinny {skinny}"


def check_store_schema(uri: str) -> None:
    """Raises NarBenchError if ``uri`` is a SQLite store whose schema revision this MLflow does not know."""
    db = sqlite_path(uri)
    revision = store_revision(db) if db is not None else None
    if revision is None or known_to_this_client(revision):
        return
    raise NarBenchError(f"the MLflow store '{db}' was written by a newer MLflow than the installed {client_version()} "
                        f"(schema revision {revision} is unknown to it): install the MLflow version that wrote it "
                        "(pip install -U mlflow-skinny), or point tracking.tracking_uri at another store")
