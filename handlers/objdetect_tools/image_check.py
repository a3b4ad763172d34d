"""`make image-test`: build objdetect:cuda, run it, and check what a deployment relies on.

Checks: healthy (a READY worker) within a minute; a prediction finds the shapes of a known image;
TorchServe's frontend runs on Debian's Netty with our request checks, and a 20 MiB form body is one
400 that leaves it serving; the process runs as a non-root user; no compiler, pip, pip cache or C headers are inside; SIGTERM
drains and stops it promptly. Then, as an ECS task with OBJDETECT_RELEASE: it serves a release from a
model store (moto's S3 on the host's loopback) and answers with the release's version, and a release
whose archive was tampered with stops it with one line. Prints the image sizes and the cold start:
from `run` to the first successful prediction. Uses the engine `make image` builds with
(objdetect_tools.containers).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import boto3
import requests

from objdetect import registry, synthetic
from objdetect_serving.archive import build_mar
from objdetect_serving.release import RELEASE_ENV, RELEASE_SHA256_ENV, Model, Release, Store, Version, sha256_of
from objdetect_serving.torchserve import Ports, free_port

from . import containers
from .cold_start import first_prediction

NAME = "objdetect-image-test"
# Measured: a build from scratch grows the disk by up to 26 GB at its peak (the venv layer is written
# as a container, a layer and a copy in the runtime stage); about 5 GB of it stays.
NEEDED_FREE_GB = 30


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=check, capture_output=True, text=True, env=containers.engine_environment())


def main(argv: list[str] | None = None) -> int:
    # Parsed before anything else: the check builds an image of many GB, so `--help` (or a mistyped
    # option) must stop here instead of starting that build.
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The image's tag comes from IMAGE (default objdetect:cuda; the flavor is the part after the colon).")
    parser.parse_args(argv)
    tag = os.environ.get("IMAGE", "objdetect:cuda")
    storage = Path("/var/lib/containers")
    free_gb = shutil.disk_usage(storage if storage.exists() else "/").free / 1e9
    if free_gb < NEEDED_FREE_GB:
        print(f"only {free_gb:.0f} GB free for container storage; building the image needs about {NEEDED_FREE_GB} GB "
              "(free space: `podman image prune -a`, `buildah rm --all`)")
        return 1
    build_log = containers.CONFIG_DIR.parent / "image-build.log"
    build_log.parent.mkdir(parents=True, exist_ok=True)
    try:
        tool, tag = containers.build(tag.split(":")[1], "shapes", log=build_log)
    except subprocess.CalledProcessError as error:
        print(build_log.read_text(errors="replace")[-6000:])
        print(f"image build failed: `{' '.join(map(str, error.cmd[:3]))} ...` exited with {error.returncode}")
        return 1
    sizes = containers.describe_sizes(tag, *containers.sizes(tool, tag))
    port = 18000 + os.getpid() % 1000
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
        if not ok:
            failures.append(what)

    run(tool, "rm", "-f", NAME, check=False)
    started = time.monotonic()
    run(tool, "run", "-d", "--name", NAME, "-p", f"127.0.0.1:{port}:8080", tag)
    try:
        sample = synthetic.generate(synthetic.SAMPLE_SEED)
        image = synthetic.encode(sample.image)
        cold_start, answer = first_prediction(f"http://127.0.0.1:{port}/predictions/detector", image, started)
        check(cold_start is not None, f"first prediction {cold_start:.1f} s after `{tool} run`" if cold_start
              else "no successful prediction within 120 s")
        if answer is not None and answer.status_code == 200:
            labels = sorted(d["label"] for d in answer.json()["detections"])
            check(labels == sorted(sample.labels), f"detections {labels} match the image's shapes")
        frontend = run(tool, "exec", NAME, "python", "-m", "objdetect_serving.frontend", "check", check=False)
        check(frontend.returncode == 0 and "deb12u" in frontend.stdout,
              f"the frontend runs on Debian's Netty: {(frontend.stdout + frontend.stderr).strip()}")
        form_bomb = requests.post(f"http://127.0.0.1:{port}/predictions/detector", data=b"a&" * (10 * 2**20 - 1),
                                  headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=60)
        after = requests.post(f"http://127.0.0.1:{port}/predictions/detector", data=image, timeout=60)
        check(form_bomb.status_code == 400 and after.status_code == 200,
              f"a 20 MiB form body gets {form_bomb.status_code}, the next image {after.status_code}")
        healthy = False
        while time.monotonic() - started < 120 and not healthy:
            healthy = run(tool, "healthcheck", "run", NAME, check=False).returncode == 0 if tool == "podman" else \
                run(tool, "inspect", "--format", "{{.State.Health.Status}}", NAME).stdout.strip() == "healthy"
            time.sleep(0.5)
        check(healthy, "the container's HEALTHCHECK passes")
        uid = run(tool, "exec", NAME, "id", "-u", check=False).stdout.strip()
        check(uid not in ("", "0"), f"runs as uid {uid}, not root")
        found = run(tool, "exec", NAME, "sh", "-c",
                    "for c in gcc cc g++ c++ clang javac pip pip3; do command -v $c; done; "
                    "find / -xdev \\( -path '*/.cache/pip' -o -path '*/site-packages/pip' -o -name '*.h' \\) "
                    "-print 2>/dev/null | head -5", check=False).stdout.split()
        check(found == [], f"no compiler, pip, pip cache or headers inside{': ' + ' '.join(found) if found else ''}")
        exposed = run(tool, "image", "inspect", "--format", "{{json .Config.ExposedPorts}}", tag).stdout
        check("8080" in exposed and "8081" not in exposed and "8082" not in exposed, f"exposes only 8080: {exposed.strip()}")
    finally:
        stopping = time.monotonic()
        run(tool, "stop", "-t", "30", NAME, check=False)
        stop_s = time.monotonic() - stopping
        written = run(tool, "logs", NAME, check=False)
        logs = written.stdout + written.stderr
        run(tool, "rm", "-f", NAME, check=False)
    drained = "drain: workers of 1 model versions stopped taking requests" in logs
    check(stop_s < 25 and drained and "no TorchServe process is left" in logs,
          f"SIGTERM drained and stopped it cleanly in {stop_s:.1f} s")
    if failures:  # what the server said, e.g. why it exited
        print("container log (last 40 lines):", *logs.splitlines()[-40:], sep="\n  ")
    check_release(tool, tag, image, check)
    print(sizes)
    print(f"cold start (container start to first successful prediction): {cold_start:.1f} s" if cold_start else "")
    return 1 if failures else 0


@contextmanager
def moto_s3():
    """moto's server on a free loopback port, and boto3's environment for it; always stopped."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    environment = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                   "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        s3 = boto3.client("s3", endpoint_url=environment["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        deadline = time.monotonic() + 30
        while True:
            try:
                s3.list_buckets()
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto's server did not start") from None
                time.sleep(0.2)
        yield s3, environment
    finally:
        server.terminate()
        server.wait(timeout=10)


def put_release(s3, store: Store, release_id: str, archive: Path, stored_bytes: bytes) -> list[str]:
    """Stores `stored_bytes` under `archive`'s hash and a release of it as detector 2.0; returns the
    container's environment options that name the release."""
    sha = sha256_of(archive)
    s3.put_object(Bucket=store.bucket, Key=store.archive_key(sha), Body=stored_bytes)
    version = Version(sha, archive.stat().st_size, registry.EMBEDDED, registry.architecture(registry.EMBEDDED).labels)
    manifest = Release(release_id, "2026-01-01T00:00:00Z", {"detector": Model("2.0", {"2.0": version})}).to_json()
    s3.put_object(Bucket=store.bucket, Key=store.release_key(release_id), Body=manifest)
    return ["-e", f"{RELEASE_ENV}={store.uri(store.release_key(release_id))}",
            "-e", f"{RELEASE_SHA256_ENV}={hashlib.sha256(manifest).hexdigest()}"]


def check_release(tool: str, tag: str, image: bytes, check) -> None:
    """The image as a task of a release: it shares the host's network to reach moto on loopback,
    so TorchServe's listeners move to free ports there."""
    ports = Ports.free()
    listen = ["-e", f"TS_INFERENCE_ADDRESS=http://127.0.0.1:{ports.inference}",
              *(f"--{f.name.replace('_', '-')}-port={getattr(ports, f.name)}" for f in fields(Ports))]
    name = f"{NAME}-release"
    with tempfile.TemporaryDirectory() as folder, moto_s3() as (s3, environment):
        archive = build_mar(registry.EMBEDDED, Path(folder), "detector", "2.0", openvino=False)
        store = Store("objdetect-models")
        s3.create_bucket(Bucket=store.bucket)
        aws = [option for key, value in environment.items() for option in ("-e", f"{key}={value}")]
        good = put_release(s3, store, "good", archive, archive.read_bytes())
        run(tool, "rm", "-f", name, check=False)
        run(tool, "run", "-d", "--name", name, "--network", "host", *aws, *good, *listen[:2], tag, *listen[2:])
        try:
            deadline, answer = time.monotonic() + 120, None
            while time.monotonic() < deadline and answer is None:
                try:
                    response = requests.post(f"http://127.0.0.1:{ports.inference}/predictions/detector", data=image,
                                             timeout=30)
                    answer = response.json() if response.status_code == 200 else None
                except requests.ConnectionError:
                    pass
                time.sleep(0.5)
            check(answer is not None and answer.get("version") == "2.0",
                  f"a release from the model store serves its version: {answer and answer.get('version')}")
            health = run(tool, "exec", name, "python", "/opt/objdetect/scripts/server.py", "--check", "detector",
                         f"--management-port={ports.management}", check=False)
            check(health.returncode == 0, "the health check passes once the release is registered")
        finally:
            run(tool, "stop", "-t", "30", name, check=False)
            run(tool, "rm", "-f", name, check=False)
        tampered = put_release(s3, store, "tampered", archive, archive.read_bytes()[:-64] + bytes(64))
        run(tool, "run", "-d", "--name", name, "--network", "host", *aws, *tampered, *listen[:2], tag, *listen[2:])
        try:
            exited = run(tool, "wait", name, check=False).stdout.strip()
            written = run(tool, "logs", name, check=False)
        finally:
            run(tool, "rm", "-f", name, check=False)
        lines = [line for line in (written.stdout + written.stderr).splitlines() if line.strip()]
        check(exited == "1" and len(lines) == 1 and "corrupt or tampered with" in lines[0],
              f"a tampered archive stops the container with one line: exit {exited}, {lines[-3:]}")
