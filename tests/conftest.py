"""Shared fixtures: the embedded model, its settings and archives, one real TorchServe per session,
crafted images, loopback HTTP servers, and a moto server for the AWS scripts."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
import torch

from objdetect import openvino_runtime, registry, synthetic
from objdetect.decode import DecodedImage
from objdetect.settings import EXACT_PATH, Settings
from objdetect_serving.archive import build_mar, default_weights
from objdetect_serving.paths import MODEL_CONFIG
from objdetect_serving.torchserve import Ports, TorchServe, free_port

SHAPES = registry.architecture(registry.EMBEDDED)


@pytest.fixture(scope="session")
def terraform() -> str:
    """terraform from PATH. In CI (CI set) its absence fails the tests that need it; elsewhere it skips them."""
    binary = shutil.which("terraform")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("terraform is not on PATH, and CI must run the Terraform tests: install terraform")
        pytest.skip("terraform is not on PATH (with CI set this fails)")
    return binary


@pytest.fixture(scope="session")
def shapes_labels() -> list[str]:
    return list(SHAPES.labels)


@pytest.fixture(scope="session")
def shapes_model(shapes_labels):
    """The committed embedded model, as torchvision's FasterRCNN in eval mode."""
    weights, _ = default_weights(SHAPES)
    return registry.build_model(registry.EMBEDDED, shapes_labels, registry.load_state_dict(weights))


@pytest.fixture(scope="session")
def shapes_openvino_ir(shapes_model, tmp_path_factory) -> Path:
    """The embedded model's OpenVINO parts, converted once (seconds) for every Detector built here."""
    folder = tmp_path_factory.mktemp("shapes-ir") / openvino_runtime.IR_FOLDER
    openvino_runtime.save(*openvino_runtime.convert(shapes_model, torch.rand(3, 480, 640)), folder)
    return folder


@pytest.fixture(scope="session")
def default_settings() -> Settings:
    return Settings.load({}, {})


@pytest.fixture(scope="session")
def exact_settings(default_settings) -> Settings:
    """The exact path: every speed switch off and eager torch, so results equal `model(images)`."""
    return dataclasses.replace(default_settings, **EXACT_PATH)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    """A model store with the embedded model's archive ("detector"), the same model on the exact
    path ("exact"), and one whose operator settings trust loopback URLs and require an API key
    ("guarded"); and exact-config.yaml, the exact path's model config, for other archives."""
    store = tmp_path_factory.mktemp("model_store")
    build_mar(registry.EMBEDDED, store, "detector", "1.0",
              config=_test_config(store, "detector", "batchSize: 4\nmaxBatchDelay: 300\n"))
    build_mar(registry.EMBEDDED, store, "exact", "1.0", config=_test_config(
        store, "exact", "batchSize: 1\n", handler="handler:\n" + "".join(
            f"  {name}: {str(value).lower()}\n" for name, value in EXACT_PATH.items())))
    guarded = _test_config(store, "guarded", "batchSize: 1\n", handler=(
        "handler:\n"
        "  url_trusted_networks: [127.0.0.0/8]\n"
        "  url_allowed_hosts: [127.0.0.1]\n"
        "  api_keys: [test-key]\n"))
    build_mar(registry.EMBEDDED, store, "guarded", "1.0", config=guarded)
    return store


def _test_config(store: Path, name: str, batching: str, handler: str = "") -> Path:
    """The repository's model-config.yaml with the test's batching (a long delay makes a batch of
    concurrent requests certain) and handler settings."""
    text = MODEL_CONFIG.read_text()
    text = "\n".join(line for line in text.splitlines() if not line.startswith(("batchSize", "maxBatchDelay")))
    if handler:
        text = text[: text.index("handler:")] + handler
    path = store / f"{name}-config.yaml"
    path.write_text(text + "\n" + batching)
    return path


@pytest.fixture(scope="session")
def exact_model_config(model_store) -> Path:
    return model_store / "exact-config.yaml"


@pytest.fixture(scope="session")
def server(model_store):
    """One real TorchServe on free loopback ports for the whole session, always stopped."""
    ts = TorchServe(model_store, {"detector": "detector-v1.0.mar", "exact": "exact-v1.0.mar",
                                  "guarded": "guarded-v1.0.mar"}, Ports.free())
    with ts:
        yield ts


@pytest.fixture()
def sample_png() -> bytes:
    return synthetic.encode(synthetic.generate(11).image)


@pytest.fixture(scope="session")
def png_header():
    """PNG bytes whose header claims width x height and whose pixel data is a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def make(width: int, height: int) -> bytes:
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                + chunk(b"IEND", b""))

    return make


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory):
    """One moto server per test module, on a free loopback port; always stopped. Services stay at
    MOTO_ECS_SERVICE_RUNNING=1 running task, so a service that desires 2 never becomes stable."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  env={**os.environ, "MOTO_ECS_SERVICE_RUNNING": "1"}, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if server.poll() is not None:
                pytest.fail(f"moto server exited with {server.returncode}:\n{log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"moto server did not listen on {port} within 30 s:\n{log.read_text()}")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture()
def aws(moto_endpoint, monkeypatch, tmp_path):
    """A clean moto, and an environment where boto3 can only reach it, with fake credentials."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST"), timeout=10).close()
    for variable in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    return moto_endpoint


@pytest.fixture()
def http_server():
    """Starts loopback HTTP servers that answer each request with
    respond(method, path, headers, body) -> (status, body, content type); returns each one's URL.
    All are stopped after the test."""
    servers = []

    def start(respond) -> str:
        class Handler(BaseHTTPRequestHandler):
            def answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, data, content_type = respond(self.command, self.path, self.headers, body)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = answer

            def log_message(self, *args):
                pass

        servers.append(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
        threading.Thread(target=servers[-1].serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{servers[-1].server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def model_output():
    """One image's output as torchvision returns it (boxes, scores, class ids), deliberately not sorted."""
    return {"boxes": torch.tensor([[10.0, 10.0, 20.0, 20.0], [30.0, 5.0, 60.0, 25.0], [0.0, 0.0, 5.0, 5.0]]),
            "scores": torch.tensor([0.6, 0.95, 0.2]),
            "labels": torch.tensor([1, 2, 3])}


@pytest.fixture(scope="session")
def decoded_image():
    """A black DecodedImage of an original width x height, decoded at another size if given."""
    def make(width, height, decoded_width=None, decoded_height=None) -> DecodedImage:
        return DecodedImage(torch.zeros(3, decoded_height or height, decoded_width or width, dtype=torch.uint8),
                            width, height)

    return make


@pytest.fixture()
def make_repository(aws):
    """Creates the ECR repository as terraform does (terraform/ecr.tf); returns its description."""
    return lambda: boto3.client("ecr").create_repository(
        repositoryName="objdetect", imageTagMutability="IMMUTABLE",
        imageScanningConfiguration={"scanOnPush": True})["repository"]


@pytest.fixture()
def put_image(aws):
    """What a registry push leaves behind in ECR: a manifest under a tag. Returns its digest."""
    def put(tag: str, seed: str = "0") -> str:
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                               "digest": "sha256:" + seed * 64},
                    "layers": []}
        return boto3.client("ecr").put_image(repositoryName="objdetect", imageManifest=json.dumps(manifest),
                                             imageTag=tag)["image"]["imageId"]["imageDigest"]

    return put


def pytest_collection_modifyitems(config, items):
    """Every test is either `unit` or `integration` (so `make test-unit` and the rest cover the suite)."""
    unmarked = [item.nodeid for item in items
                if len({"unit", "integration"} & {mark.name for mark in item.iter_markers()}) != 1]
    if unmarked:
        raise pytest.UsageError("tests marked neither or both unit and integration:\n  " + "\n  ".join(unmarked))
