"""Model versions with scripts/models.py against the real TorchServe: versions side by side, defaults,
rollback, scaling, and the failure paths an operator meets. Uses its own model name ("ops") so other
tests keep theirs; each test registers what it needs and leaves no "ops" version behind."""

import json
import shutil
import subprocess
import sys
import zipfile

import pytest
import requests

from objdetect import synthetic
from objdetect.synthetic import encode
from objdetect_serving import versions
from objdetect_serving.paths import MODEL_STORE, ROOT
from objdetect_serving.torchserve import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def archives(model_store):
    """ops v1.0 and v2.0 built by `make mar`, and a v3.0 whose weights do not fit its architecture."""
    built = {}
    for version in ("1.0", "2.0"):
        subprocess.run(["make", "--no-print-directory", "mar", "NAME=ops", f"VERSION={version}"], cwd=ROOT,
                       check=True, capture_output=True)
        built[version] = model_store / f"ops-v{version}.mar"
        shutil.move(MODEL_STORE / f"ops-v{version}.mar", built[version])
    broken = model_store / "ops-v3.0.mar"
    with zipfile.ZipFile(built["2.0"]) as source, zipfile.ZipFile(broken, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "model.json":  # two extra labels: the checkpoint no longer fits
                info = json.loads(data)
                info["labels"] += ["hexagon", "star"]
                data = json.dumps(info).encode()
            if item.filename == "MAR-INF/MANIFEST.json":
                data = data.replace(b'"modelVersion": "2.0"', b'"modelVersion": "3.0"')
            target.writestr(item, data)
    built["3.0"] = broken
    return built


@pytest.fixture(autouse=True)
def no_ops_left(server):
    """After each test, every "ops" version is unregistered (the default last: TorchServe keeps a
    default while other versions remain)."""
    yield
    management = server.url("management")
    listed = requests.get(f"{management}/models/ops/all", timeout=10)
    if listed.status_code != 200:
        return
    default = requests.get(f"{management}/models/ops", timeout=10).json()[0]["modelVersion"]
    for version in sorted({d["modelVersion"] for d in listed.json()}, key=lambda v: v == default):
        requests.delete(f"{management}/models/ops/{version}", timeout=60)


@pytest.fixture()
def cli(server, tmp_path):
    """Runs the CLI as an operator would, with this test's own set-default history; returns
    (exit status, stdout, stderr)."""
    def run(*args, state=None):
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "models.py"), "--url", server.url("management"),
             "--state", str(state or tmp_path / "model-defaults.json"), *args],
            capture_output=True, text=True, timeout=300)
        return result.returncode, result.stdout, result.stderr

    return run


@pytest.fixture()
def register(cli, archives):
    """Registers ops versions, in order (the first becomes the default)."""
    def run(*names):
        for version in names:
            status, _, err = cli("register", str(archives[version]), "--name", "ops", "--version", version)
            assert status == 0, err

    return run


def answered_version(server, version=None) -> str:
    path = "/predictions/ops" + (f"/{version}" if version else "")
    response = requests.post(server.url() + path, data=encode(synthetic.generate(3).image), timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["version"]


def test_make_mar_stamps_the_version_into_the_archive(archives):
    assert versions.archive_manifest(archives["2.0"])["modelVersion"] == "2.0"
    assert versions.archive_manifest(archives["1.0"])["modelName"] == "ops"


def test_versions_side_by_side_defaults_and_rollback(server, archives, cli):
    status, out, err = cli("register", str(archives["1.0"]), "--name", "ops", "--version", "1.0")
    assert status == 0, err
    assert "registered ops 1.0: 1 worker(s): READY" in out
    status, out, err = cli("register", str(archives["2.0"]), "--name", "ops", "--version", "2.0",
                           "--batch-size", "2", "--max-batch-delay", "10")
    assert status == 0, err

    assert answered_version(server, "1.0") == "1.0"
    assert answered_version(server, "2.0") == "2.0"
    assert answered_version(server) == "1.0"  # the first registered stays the default

    status, out, _ = cli("list")
    assert "ops 1.0 (default): 1 worker(s): READY" in out and "ops 2.0: 1 worker(s): READY" in out
    described = json.loads(cli("describe", "ops", "2.0")[1])
    assert described["batchSize"] == 2 and described["maxBatchDelay"] == 10 and described["isDefault"] is False

    status, out, _ = cli("set-default", "ops", "2.0")
    assert status == 0 and "default version 1.0 -> 2.0" in out
    assert answered_version(server) == "2.0"

    status, out, _ = cli("rollback", "ops")
    assert status == 0 and "rolled back 2.0 -> 1.0 (the default before the last set-default)" in out
    assert answered_version(server) == "1.0"

    # With no recorded history (another operator's machine), rollback takes the version below.
    cli("set-default", "ops", "2.0")
    status, out, _ = cli("rollback", "ops", state=server.workdir / "elsewhere.json")
    assert status == 0 and "rolled back 2.0 -> 1.0 (the highest version below it" in out


def test_scale_changes_the_worker_count(cli, register):
    register("2.0")
    status, out, err = cli("scale", "ops", "2.0", "--min-workers", "2", "--max-workers", "2")
    assert status == 0, err
    assert "min 2, max 2, 2 worker(s)" in out
    status, out, _ = cli("scale", "ops", "2.0", "--min-workers", "1", "--max-workers", "1")
    assert status == 0 and "min 1, max 1, 1 worker(s)" in out
    assert cli("scale", "ops", "--min-workers", "3", "--max-workers", "2")[0] == 1


def test_unregistering_the_default_needs_force(server, cli, register):
    register("1.0", "2.0")
    status, _, err = cli("unregister", "ops", "1.0")
    assert status == 1 and "is the default and 2.0 remain" in err
    status, out, err = cli("unregister", "ops", "2.0")
    assert status == 0, err
    assert "unregistered ops 2.0" in out
    register("2.0")
    status, out, err = cli("unregister", "ops", "1.0", "--force")
    assert status == 0 and "default version 1.0 -> 2.0" in out and "unregistered ops 1.0" in out
    assert answered_version(server) == "2.0"


def test_an_archive_that_fails_to_load_is_reported_and_unregistered(server, archives, cli):
    status, _, err = cli("register", str(archives["3.0"]), "--name", "ops", "--version", "3.0")
    assert status == 1
    assert "TorchServe refused" in err and "did not load and was unregistered" in err
    listed = requests.get(f"{server.url('management')}/models/ops/all", timeout=10)
    assert listed.status_code == 404 or "3.0" not in {d["modelVersion"] for d in listed.json()}


def test_a_version_mismatch_is_refused_before_registering(server, archives, cli):
    status, _, err = cli("register", str(archives["2.0"]), "--name", "ops", "--version", "9.9")
    assert status == 1 and "holds version 2.0, not 9.9" in err and "make mar VERSION=9.9" in err


def test_unknown_models_and_versions_and_unreachable_servers_are_clear(cli, register):
    status, _, err = cli("describe", "nosuchmodel")
    assert status == 1 and "HTTP 404" in err and "nosuchmodel" in err
    register("1.0")
    status, _, err = cli("set-default", "ops", "7.7")
    assert status == 1 and "HTTP 404" in err
    closed = free_port()
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "models.py"), "--url", f"http://127.0.0.1:{closed}",
                             "list"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "cannot reach TorchServe's management API" in result.stderr
