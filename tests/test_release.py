"""Tasks serving a model release from the model store: the container's entrypoint (scripts/server.py)
with OBJDETECT_RELEASE, against moto's S3 on 127.0.0.1 and a real TorchServe per "task".

Two tasks started from one release serve the same versions and default; a task started after a new
release serves the new one; an archive that is missing, corrupt, tampered with or stamped with
another version, and a manifest changed after release, each stop a task with one line before
TorchServe starts; a version that does not load stops it with no health check ever passing.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import psutil
import pytest
import requests

from objdetect import registry
from objdetect_serving import torchserve
from objdetect_serving.archive import build_mar
from objdetect_serving.paths import ROOT
from objdetect_serving.release import Model, Release, Store, Version, sha256_of
from objdetect_serving.torchserve import Ports

pytestmark = pytest.mark.integration

SERVER = ROOT / "scripts" / "server.py"
STORE = Store("objdetect-models")


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, Path]:
    """detector 1.0, 2.0 and 3.0 of the embedded model, as `publish` builds them; and "broken", a
    4.0 whose weights no longer fit its labels (it fails to load in its worker)."""
    folder = tmp_path_factory.mktemp("release-archives")
    built = {v: build_mar(registry.EMBEDDED, folder, "detector", v) for v in ("1.0", "2.0", "3.0")}
    broken = folder / "detector-v4.0.mar"
    with zipfile.ZipFile(built["3.0"]) as source, zipfile.ZipFile(broken, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == registry.MODEL_INFO:
                info = json.loads(data)
                info["labels"] += ["hexagon", "star"]
                data = json.dumps(info).encode()
            if item.filename == "MAR-INF/MANIFEST.json":
                data = data.replace(b'"modelVersion": "3.0"', b'"modelVersion": "4.0"')
            target.writestr(item, data)
    built["4.0"] = broken
    return built


@pytest.fixture()
def s3(aws):
    client = boto3.client("s3")
    client.create_bucket(Bucket=STORE.bucket)
    return client


def publish(s3, path: Path, uploaded: bytes | None = None) -> Version:
    """Stores an archive under its hash (or `uploaded` bytes under that hash: a tampered store)."""
    sha = sha256_of(path)
    s3.put_object(Bucket=STORE.bucket, Key=STORE.archive_key(sha), Body=uploaded or path.read_bytes())
    return Version(sha, path.stat().st_size, registry.EMBEDDED, registry.architecture(registry.EMBEDDED).labels)


def put_release(s3, release_id: str, versions: dict[str, Version], default: str) -> tuple[str, str]:
    """Writes the manifest; returns what a task definition names: (its s3:// URI, its SHA-256)."""
    data = Release(release_id, "2026-12-07T00:00:00Z", {"detector": Model(default, versions)}).to_json()
    key = STORE.release_key(release_id)
    s3.put_object(Bucket=STORE.bucket, Key=key, Body=data)
    return STORE.uri(key), hashlib.sha256(data).hexdigest()


@dataclass
class Task:
    process: subprocess.Popen
    ports: Ports
    lines: list[str] = field(default_factory=list)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def url(self, api: str = "inference") -> str:
        return f"http://127.0.0.1:{getattr(self.ports, api)}"

    def wait_healthy(self, timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s
        while torchserve.check("detector", self.ports.management) != 0:
            assert self.process.poll() is None, f"the task exited with {self.process.returncode}:\n{self.log}"
            assert time.monotonic() < deadline, f"not healthy after {timeout_s} s:\n{self.log}"
            time.sleep(0.5)

    def serves(self) -> tuple[set[str], str]:
        """(the versions registered, the default) from the task's management API."""
        management = self.url("management")
        versions = {d["modelVersion"] for d in requests.get(f"{management}/models/detector/all", timeout=10).json()}
        return versions, requests.get(f"{management}/models/detector", timeout=10).json()[0]["modelVersion"]

    def answer(self, image: bytes, version: str = "") -> dict:
        response = requests.post(f"{self.url()}/predictions/detector" + (f"/{version}" if version else ""),
                                 data=image, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()


@contextmanager
def task(release_uri: str, release_sha256: str, scratch: Path):
    """The container's entrypoint for a task definition naming this release; always stopped, with
    every process it started."""
    ports = Ports.free()
    command = [sys.executable, str(SERVER), "--release", release_uri, "--release-sha256", release_sha256,
               "--scratch", str(scratch), "--drain-grace-s", "0", "--drain-timeout-s", "10",
               *(f"--{name.replace('_', '-')}-port={port}" for name, port in vars(ports).items())]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    started = Task(process, ports)
    reader = threading.Thread(target=lambda: started.lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        yield started
    finally:
        descendants = psutil.Process(process.pid).children(recursive=True) if process.poll() is None else []
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for child in descendants:  # TorchServe's own process group, had the entrypoint not stopped it
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        reader.join(timeout=10)


def refusal(release_uri: str, release_sha256: str, scratch: Path) -> str:
    """Runs a task that must refuse its release before TorchServe starts; returns its only line."""
    with task(release_uri, release_sha256, scratch) as refused:
        assert refused.process.wait(timeout=60) == 1, refused.log
    lines = [line for line in refused.lines if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("objdetect: "), refused.log
    assert torchserve.check("detector", refused.ports.management) == 1
    return lines[0]


def test_tasks_started_from_one_release_serve_its_versions_and_default_and_a_later_task_the_next(
        s3, archives, tmp_path, sample_png):
    first = {v: publish(s3, archives[v]) for v in ("1.0", "2.0")}
    uri, sha = put_release(s3, "r1", first, default="2.0")
    with task(uri, sha, tmp_path / "a") as a, task(uri, sha, tmp_path / "b") as b:
        for started in (a, b):
            started.wait_healthy()
        for started in (a, b):
            assert started.serves() == ({"1.0", "2.0"}, "2.0"), started.log
            answered = started.answer(sample_png)
            assert (answered["model"], answered["version"]) == ("detector", "2.0")
            assert started.answer(sample_png, "1.0")["version"] == "1.0"
            assert "release r1 READY: detector 2.0 (default), 1.0" in started.log
        # The health check the container runs (HEALTHCHECK, the task definition's healthCheck).
        check = [sys.executable, str(SERVER), "--check", "detector", f"--management-port={a.ports.management}"]
        assert subprocess.run(check, capture_output=True).returncode == 0

    next_uri, next_sha = put_release(s3, "r2", {"3.0": publish(s3, archives["3.0"]), "2.0": first["2.0"]}, default="3.0")
    with task(next_uri, next_sha, tmp_path / "c") as c:
        c.wait_healthy()
        assert c.serves() == ({"2.0", "3.0"}, "3.0"), c.log
        assert c.answer(sample_png)["version"] == "3.0"


def test_a_version_that_does_not_load_stops_the_task_without_it_ever_being_healthy(s3, archives, tmp_path):
    uri, sha = put_release(s3, "half", {"1.0": publish(s3, archives["1.0"]), "4.0": publish(s3, archives["4.0"])},
                           default="1.0")
    healthy = []
    with task(uri, sha, tmp_path / "scratch") as broken:
        while broken.process.poll() is None:
            healthy.append(torchserve.check("detector", broken.ports.management))
            time.sleep(0.2)
    assert broken.process.returncode == 1, broken.log
    assert "registered detector 1.0" in broken.log  # the good version loaded first...
    assert "objdetect: release half: detector 4.0" in broken.log  # ...the broken one stopped the task
    assert healthy and 0 not in healthy
    assert "no TorchServe process is left" in broken.log


def test_an_archive_missing_from_the_store_stops_the_task_with_one_line(s3, archives, tmp_path):
    absent = Version("0" * 64, 1000, registry.EMBEDDED, registry.architecture(registry.EMBEDDED).labels)
    uri, sha = put_release(s3, "missing", {"1.0": absent}, default="1.0")
    line = refusal(uri, sha, tmp_path / "scratch")
    assert "detector 1.0's archive s3://objdetect-models/archives/" + "0" * 64 + ".mar" in line
    assert "not in the store (missing)" in line


def test_a_corrupt_archive_stops_the_task_with_one_line_and_leaves_no_archive(s3, archives, tmp_path):
    tampered = publish(s3, archives["1.0"], uploaded=archives["1.0"].read_bytes()[:-100] + b"x" * 100)
    uri, sha = put_release(s3, "tampered", {"1.0": tampered}, default="1.0")
    line = refusal(uri, sha, tmp_path / "scratch")
    assert "corrupt or tampered with" in line and tampered.archive in line
    assert not list((tmp_path / "scratch").glob("*.mar*"))


def test_an_archive_stamped_with_another_version_stops_the_task(s3, archives, tmp_path):
    """The hash is right, but the archive answers as 3.0: TorchServe serves the stamped version."""
    uri, sha = put_release(s3, "restamped", {"2.0": publish(s3, archives["3.0"])}, default="2.0")
    assert "was built as detector 3.0, not detector 2.0" in refusal(uri, sha, tmp_path / "scratch")


def test_a_manifest_changed_after_its_release_stops_the_task(s3, archives, tmp_path):
    uri, sha = put_release(s3, "edited", {"1.0": publish(s3, archives["1.0"])}, default="1.0")
    put_release(s3, "edited", {"1.0": publish(s3, archives["1.0"]), "2.0": publish(s3, archives["2.0"])}, default="2.0")
    assert "changed after it was released" in refusal(uri, sha, tmp_path / "scratch")
    assert "must be the manifest's SHA-256" in refusal(uri, "", tmp_path / "scratch")
