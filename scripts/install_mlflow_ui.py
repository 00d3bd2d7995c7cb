"""Installs MLflow's web UI (the full ``mlflow`` package) at exactly the installed client's
(``mlflow-skinny``'s) version; nothing when it is there already. Run by ``make mlflow-ui``.

``mlflow`` and ``mlflow-skinny`` install the same ``mlflow/`` files, so an ``mlflow`` of another
version silently replaces the client's code: ``pip install -e .[ui]`` once put mlflow 3.17.2's files
over mlflow-skinny 3.18.0, which then could not open the store it had written. Where ``mlflow==V``'s
own pins do not resolve (mlflow 3.18.0 pins mlflow-tracing==3.18.0, which some indexes lack; it is a
tracing-only subset of mlflow-skinny's files), ``mlflow==V`` goes in without dependencies and its
other requirements after it, with mlflow-skinny pinned again.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

CLIENT_PARTS = {"mlflow-skinny", "mlflow-tracing"}  # subsets of mlflow's own files


def installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def server_requirements(requirements: list[str]) -> list[str]:
    """``mlflow``'s requirements without its client parts and extras, markers evaluated here."""
    kept = []
    for req in map(Requirement, requirements):
        elsewhere = req.marker is not None and not req.marker.evaluate({"extra": ""})  # an extra, another OS
        if canonicalize_name(req.name) in CLIENT_PARTS or elsewhere:
            continue
        req.marker = None
        kept.append(str(req))
    return kept


def main() -> int:
    client, ui = installed("mlflow-skinny"), installed("mlflow")
    if client is None:
        print("install-mlflow-ui: mlflow-skinny is not installed; run make setup first", file=sys.stderr)
        return 2
    if ui == client:
        return 0
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-compile"]
    replacing = f" (replacing mlflow {ui})" if ui else ""
    print(f"install-mlflow-ui: mlflow=={client}, the MLflow client's version{replacing}", flush=True)
    if subprocess.run([*pip, f"mlflow=={client}", f"mlflow-skinny=={client}"]).returncode != 0:
        print(f"install-mlflow-ui: mlflow=={client}'s pins do not resolve here: installing it without dependencies, "
              "then its server requirements", flush=True)
        subprocess.run([*pip, "--no-deps", f"mlflow=={client}"], check=True)
        subprocess.run([*pip, f"mlflow-skinny=={client}", *server_requirements(requires("mlflow") or [])], check=True)
    if (installed("mlflow"), installed("mlflow-skinny")) != (client, client):
        print(f"install-mlflow-ui: ended with mlflow {installed('mlflow')} and mlflow-skinny "
              f"{installed('mlflow-skinny')}, not both {client}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
