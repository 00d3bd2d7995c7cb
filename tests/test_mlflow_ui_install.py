"""scripts/install_mlflow_ui.py (make mlflow-ui): the UI is installed at exactly the client's version."""

import importlib.util
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install_mlflow_ui.py"


@pytest.fixture
def script():
    spec = importlib.util.spec_from_file_location("install_mlflow_ui", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_pip(monkeypatch, script, versions: dict, resolves: bool) -> list[list[str]]:
    """Records pip calls; a pinned install sets both versions (or fails when ``resolves`` is off)."""
    calls = []

    def run(cmd, check=False):
        calls.append(cmd[cmd.index("--no-compile") + 1:])
        pins = [arg.split("==")[1] for arg in cmd if arg.startswith("mlflow==")]
        ok = resolves or "--no-deps" in cmd or not pins
        if pins and ok:
            versions["mlflow"] = pins[0]
        return subprocess.CompletedProcess(cmd, 0 if ok else 1)

    monkeypatch.setattr(script, "installed", versions.get)
    monkeypatch.setattr(script.subprocess, "run", run)
    return calls


def test_nothing_is_installed_when_the_ui_matches_the_client(monkeypatch, script):
    calls = fake_pip(monkeypatch, script, {"mlflow-skinny": "3.18.0", "mlflow": "3.18.0"}, resolves=True)
    assert script.main() == 0 and calls == []


def test_the_ui_is_pinned_to_the_client_version_replacing_another(monkeypatch, script):
    versions = {"mlflow-skinny": "3.18.0", "mlflow": "3.17.2"}
    calls = fake_pip(monkeypatch, script, versions, resolves=True)
    assert script.main() == 0
    assert calls == [["mlflow==3.18.0", "mlflow-skinny==3.18.0"]] and versions["mlflow"] == "3.18.0"


def test_unresolvable_pins_fall_back_to_no_deps_plus_the_server_requirements(monkeypatch, script):
    versions = {"mlflow-skinny": "3.18.0"}
    calls = fake_pip(monkeypatch, script, versions, resolves=False)
    monkeypatch.setattr(script, "requires", lambda name: ["mlflow-skinny==3.18.0", "MLflow_Tracing==3.18.0",
                                                          "Flask<4", 'waitress<4; platform_system == "Windows"',
                                                          "pyarrow; extra == 'extras'"])
    assert script.main() == 0
    assert calls == [["mlflow==3.18.0", "mlflow-skinny==3.18.0"], ["--no-deps", "mlflow==3.18.0"],
                     ["mlflow-skinny==3.18.0", "Flask<4"]]
    assert versions == {"mlflow-skinny": "3.18.0", "mlflow": "3.18.0"}
