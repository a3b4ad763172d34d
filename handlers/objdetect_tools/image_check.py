"""`make image-test`: build objdetect:cuda, run it, and check what a deployment relies on.

Checks: healthy (a READY worker) within a minute; a prediction finds the shapes of a known image;
TorchServe's frontend runs on Debian's Netty with our request checks, and a 20 MiB form body is one
400 that leaves it serving; the process runs as a non-root user; no compiler, pip, pip cache or C headers are inside; SIGTERM
drains and stops it promptly. Prints the image sizes and the cold start: from `run` to the first successful
prediction. Uses the engine `make image` builds with (objdetect_tools.containers).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import requests

from objdetect import synthetic

from . import containers
from .cold_start import first_prediction

NAME = "objdetect-image-test"
# Measured: a build from scratch grows the disk by up to 26 GB at its peak (the venv layer is written
# as a container, a layer and a copy in the runtime stage); about 5 GB of it stays.
NEEDED_FREE_GB = 30


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=check, capture_output=True, text=True, env=containers.engine_environment())


def main() -> int:
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
    print(sizes)
    print(f"cold start (container start to first successful prediction): {cold_start:.1f} s" if cold_start else "")
    return 1 if failures else 0
