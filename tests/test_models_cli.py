"""scripts/models.py against the real TorchServe: versions side by side, defaults, rollback, scaling,
and the failure paths an operator meets. Uses its own model name ("ops") so other tests keep theirs."""

import json
import shutil
import subprocess
import sys
import zipfile

import pytest
import requests

import models
from conftest import ROOT, encode
from objdetect import synthetic
from server import free_port


@pytest.fixture(scope="module")
def archives(server, model_store, tmp_path_factory):
    """ops v1.0 and v2.0 built by `make mar`, and a v3.0 whose weights do not fit its architecture."""
    built = {}
    for version in ("1.0", "2.0"):
        subprocess.run(["make", "--no-print-directory", "mar", "NAME=ops", f"VERSION={version}"], cwd=ROOT,
                       check=True, capture_output=True)
        built[version] = model_store / f"ops-v{version}.mar"
        shutil.move(ROOT / "model_store" / f"ops-v{version}.mar", built[version])
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
    yield built
    for version in ("1.0", "2.0", "3.0"):
        requests.delete(f"{server.url('management')}/models/ops/{version}", timeout=60)


def cli(server, *args, state=None):
    """Runs the CLI as an operator would; returns (exit status, stdout, stderr)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "models.py"), "--url", server.url("management"),
         "--state", str(state or server.workdir / "model-defaults.json"), *args],
        capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout, result.stderr


def answered_version(server, version=None) -> str:
    path = "/predictions/ops" + (f"/{version}" if version else "")
    response = requests.post(server.url() + path, data=encode(synthetic.generate(3).image), timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["version"]


def test_make_mar_stamps_the_version_into_the_archive(archives):
    assert models.archive_manifest(archives["2.0"])["modelVersion"] == "2.0"
    assert models.archive_manifest(archives["1.0"])["modelName"] == "ops"


def test_versions_side_by_side_defaults_and_rollback(server, archives):
    status, out, err = cli(server, "register", str(archives["1.0"]), "--name", "ops", "--version", "1.0")
    assert status == 0, err
    assert "registered ops 1.0: 1 worker(s): READY" in out
    status, out, err = cli(server, "register", str(archives["2.0"]), "--name", "ops", "--version", "2.0",
                           "--batch-size", "2", "--max-batch-delay", "10")
    assert status == 0, err

    assert answered_version(server, "1.0") == "1.0"
    assert answered_version(server, "2.0") == "2.0"
    assert answered_version(server) == "1.0"  # the first registered stays the default

    status, out, _ = cli(server, "list")
    assert "ops 1.0 (default): 1 worker(s): READY" in out and "ops 2.0: 1 worker(s): READY" in out
    described = json.loads(cli(server, "describe", "ops", "2.0")[1])
    assert described["batchSize"] == 2 and described["maxBatchDelay"] == 10 and described["isDefault"] is False

    status, out, _ = cli(server, "set-default", "ops", "2.0")
    assert status == 0 and "default version 1.0 -> 2.0" in out
    assert answered_version(server) == "2.0"

    status, out, _ = cli(server, "rollback", "ops")
    assert status == 0 and "rolled back 2.0 -> 1.0 (the default before the last set-default)" in out
    assert answered_version(server) == "1.0"

    # With no recorded history (another operator's machine), rollback takes the version below.
    cli(server, "set-default", "ops", "2.0")
    status, out, _ = cli(server, "rollback", "ops", state=server.workdir / "elsewhere.json")
    assert status == 0 and "rolled back 2.0 -> 1.0 (the highest version below it" in out


def test_scale_changes_the_worker_count(server, archives):
    status, out, err = cli(server, "scale", "ops", "2.0", "--min-workers", "2", "--max-workers", "2")
    assert status == 0, err
    assert "min 2, max 2, 2 worker(s)" in out
    status, out, _ = cli(server, "scale", "ops", "2.0", "--min-workers", "1", "--max-workers", "1")
    assert status == 0 and "min 1, max 1, 1 worker(s)" in out
    assert cli(server, "scale", "ops", "--min-workers", "3", "--max-workers", "2")[0] == 1


def test_unregistering_the_default_needs_force(server, archives):
    status, _, err = cli(server, "unregister", "ops", "1.0")
    assert status == 1 and "is the default and 2.0 remain" in err
    status, out, err = cli(server, "unregister", "ops", "2.0")
    assert status == 0, err
    assert "unregistered ops 2.0" in out
    status, out, err = cli(server, "register", str(archives["2.0"]), "--name", "ops", "--version", "2.0")
    assert status == 0, err
    status, out, err = cli(server, "unregister", "ops", "1.0", "--force")
    assert status == 0 and "default version 1.0 -> 2.0" in out and "unregistered ops 1.0" in out
    assert answered_version(server) == "2.0"


def test_an_archive_that_fails_to_load_is_reported_and_unregistered(server, archives):
    status, _, err = cli(server, "register", str(archives["3.0"]), "--name", "ops", "--version", "3.0")
    assert status == 1
    assert "TorchServe refused" in err and "did not load and was unregistered" in err
    listed = requests.get(f"{server.url('management')}/models/ops/all", timeout=10)
    assert listed.status_code == 404 or "3.0" not in {d["modelVersion"] for d in listed.json()}


def test_a_version_mismatch_is_refused_before_registering(server, archives):
    status, _, err = cli(server, "register", str(archives["2.0"]), "--name", "ops", "--version", "9.9")
    assert status == 1 and "holds version 2.0, not 9.9" in err and "make mar VERSION=9.9" in err


def test_unknown_models_and_versions_and_unreachable_servers_are_clear(server, archives):
    status, _, err = cli(server, "describe", "nosuchmodel")
    assert status == 1 and "HTTP 404" in err and "nosuchmodel" in err
    status, _, err = cli(server, "set-default", "ops", "7.7")
    assert status == 1 and "HTTP 404" in err
    closed = free_port()
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "models.py"), "--url", f"http://127.0.0.1:{closed}",
                             "list"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "cannot reach TorchServe's management API" in result.stderr
