"""objdetect-client as its own distribution (handlers/objdetect_client/pyproject.toml): its pins are
the repository's, the repository's own install still holds the package once, and it installs into a
fresh virtual environment with requests, Pillow and tqdm alone, where torch cannot be imported, and
runs: --version, --help and a real detect against a loopback server that answers as the service."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from PIL import Image
from setuptools import find_namespace_packages, find_packages

import objdetect_client

ROOT = Path(__file__).resolve().parents[1]
CLIENT_DIR = ROOT / "handlers" / "objdetect_client"
# What `pip install ./handlers/objdetect_client` may bring: the client, its three dependencies and
# theirs, and what every virtual environment starts with.
ALLOWED = {"objdetect-client", "requests", "pillow", "tqdm", "certifi", "charset-normalizer", "idna", "urllib3",
           "pip", "setuptools"}
ANSWER = {"model": "detector", "version": "1.0", "width": 40, "height": 30,
          "detections": [{"label": "square", "class_id": 2, "score": 0.75, "box": [1, 2, 3, 4]}]}


def pins(requirements: list[str]) -> dict[str, str]:
    """{normalized name: requirement} for lines such as "pillow==13.0.0"."""
    return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", line).group()).lower(): line for line in requirements}


@pytest.mark.unit
def test_the_clients_pins_are_the_repositorys():
    main = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((CLIENT_DIR / "pyproject.toml").read_text())
    project = client["project"]
    ours = pins(main["dependencies"]) | pins(main["optional-dependencies"]["dev"])
    assert set(pins(project["dependencies"])) == {"requests", "pillow", "tqdm"}
    for extra, names in (("dependencies", ["requests", "pillow", "tqdm"]), ("s3", ["boto3"]),
                         ("coco", ["pycocotools"])):
        declared = pins(project["dependencies"] if extra == "dependencies" else project["optional-dependencies"][extra])
        assert declared == {name: ours[name] for name in names}, extra
    assert project["scripts"] == main["scripts"] == {"objdetect-client": "objdetect_client.cli:main"}
    assert client["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "objdetect_client.__version__"}
    assert client["tool"]["setuptools"]["package-dir"] == {"objdetect_client": "."}


def client_packages(root: Path) -> list[str]:
    """The packages of objdetect_client, with modules, that the repository's own pyproject.toml
    finds under `root` (namespace packages: pyproject.toml's default)."""
    find = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    search = find_namespace_packages if find.get("namespaces", True) else find_packages
    where = root / find["where"][0]
    return [name for name in search(str(where), include=find["include"])
            if name.startswith("objdetect_client") and any((where / name.replace(".", "/")).glob("*.py"))]


@pytest.mark.unit
def test_the_repositorys_install_holds_the_client_package_once():
    """The client's project folder is the package itself: the repository's own package search must
    find one objdetect_client, not also a client build's copy inside it (the install test below
    builds one in place)."""
    assert client_packages(ROOT) == ["objdetect_client"]
    assert Path(objdetect_client.__file__).resolve() == CLIENT_DIR / "__init__.py"


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), "gray").save(buffer, "PNG")
    return buffer.getvalue()


def disk_mib(folder: Path) -> float:
    """What `du -s` counts: the blocks of every file and folder, in MiB."""
    return sum(path.lstat().st_blocks * 512 for path in [folder, *folder.rglob("*")]) / 2 ** 20


@pytest.mark.integration
def test_the_client_installs_alone_and_detects_without_torch(tmp_path, http_server, capsys):
    """Installed from a copy of the repository's packages, so that pip's build in place (setuptools'
    build folder, the egg-info) happens there and not in the checkout; the repository's package
    search over that copy must then still find the client once. pip reaches the package index for
    the pins."""
    repository = tmp_path / "repository"
    shutil.copytree(ROOT / "handlers", repository / "handlers",
                    ignore=shutil.ignore_patterns("__pycache__", "build", ".build", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", repository)
    source = repository / "handlers" / "objdetect_client"
    venv = tmp_path / "venv"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=120)
    python, script = venv / "bin" / "python", venv / "bin" / "objdetect-client"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(source)], capture_output=True,
                             text=True, env=env, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    installed = json.loads(subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True,
                                          text=True, env=env, check=True, timeout=120).stdout)
    names = {re.sub(r"[-_.]+", "-", item["name"]).lower() for item in installed}
    assert names <= ALLOWED, names - ALLOWED
    versions = {re.sub(r"[-_.]+", "-", item["name"]).lower(): item["version"] for item in installed}
    assert versions["objdetect-client"] == objdetect_client.__version__
    assert client_packages(repository) == ["objdetect_client"]  # after the build in place
    with capsys.disabled():
        print(f"\nfresh venv with objdetect-client: {disk_mib(venv):.0f} MiB (du -sh {venv}); "
              f"installed in {time.monotonic() - started:.0f} s")

    torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True, env=env, timeout=60)
    assert torch.returncode != 0 and "No module named 'torch'" in torch.stderr

    version = subprocess.run([str(script), "--version"], capture_output=True, text=True, env=env, timeout=60)
    assert version.returncode == 0 and version.stdout == f"objdetect-client {objdetect_client.__version__}\n"
    help_ = subprocess.run([str(script), "detect", "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert help_.returncode == 0 and "exit status:" in help_.stdout and "--model-version" in help_.stdout

    image, received = png(), []

    def respond(method, path, headers, body):
        received.append((method, path))
        if (method, path) == ("GET", "/ping"):
            return 200, b'{"status": "Healthy"}', "application/json"
        assert image in body
        return 200, json.dumps(ANSWER).encode(), "application/json"

    url = http_server(respond)
    (tmp_path / "a.png").write_bytes(image)
    detect = subprocess.run([str(script), "detect", str(tmp_path / "a.png"), "--endpoint", url.removeprefix("http://"),
                             "--quiet"], capture_output=True, text=True, env=env, timeout=120)
    assert detect.returncode == 0, detect.stderr
    assert json.loads(detect.stdout) == {"source": str(tmp_path / "a.png"), **ANSWER}
    assert received == [("GET", "/ping"), ("POST", "/predictions/detector")]
    assert disk_mib(venv) < 150  # torch alone would be ten times this
