"""GET /ping on the inference port, the load balancer's health check, says Healthy only while the
server serves what it was started for (HttpRequestHandler.java, from torchserve.py's markers).

Measured on loopback with a worker whose load takes LOAD_S: requests sent from the moment /ping
first answers 200, against TorchServe's own /ping ("before": Healthy while the worker loads) and
against the container's entrypoint ("after"). `-s` prints the table docs/releases.md quotes.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from objdetect import registry, synthetic
from objdetect_serving.archive import build_mar
from objdetect_serving.management import Management
from objdetect_serving.paths import HANDLER, ROOT
from objdetect_serving.torchserve import Ports, TorchServe

pytestmark = pytest.mark.integration

LOAD_S = 20  # the worker's load: a large model's download and load, in the time a test can wait
REQUESTS = 8
SPACING_S = 0.5  # between the requests' starts, from /ping's first 200
DEADLINE_S = 180  # from launch to /ping's first 200


@pytest.fixture(scope="module")
def slow_store(tmp_path_factory) -> Path:
    """A model store with "slow": the embedded model, its worker sleeping LOAD_S before it loads."""
    store = tmp_path_factory.mktemp("slow_store")
    archive = build_mar(registry.EMBEDDED, store, "slow", "1.0")
    rewritten = archive.with_suffix(".rewritten")
    start = "    def initialize(self, context):\n"
    with zipfile.ZipFile(archive) as old, zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as new:
        for item in old.infolist():
            data = old.read(item)
            if item.filename == HANDLER.name:
                assert data.decode().count(start) == 1
                data = data.decode().replace(start, f"{start}        time.sleep({LOAD_S})\n").encode()
            new.writestr(item, data)
    rewritten.replace(archive)
    return store


@pytest.fixture(scope="module")
def image() -> bytes:
    buffer = io.BytesIO()
    synthetic.generate(seed=5).image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@dataclass
class Run:
    """One server's start, in seconds after its launch, and what the requests sent from /ping's first
    200 got (`sent` in seconds after that 200; status None: no HTTP answer)."""

    name: str
    first_healthy_s: float = 0.0
    ready_s: float | None = None  # when the management API first showed a READY worker
    ready_at_first_healthy: bool = False
    pings: list[tuple[float, int | None, dict | None]] = field(default_factory=list)  # before the first 200
    answers: list[tuple[float, int | None, float]] = field(default_factory=list)  # (sent, status, latency)

    def table(self) -> str:
        unhealthy = sum(1 for _, status, _ in self.pings if status is not None)
        lines = [f"{self.name}: /ping first 200 at {self.first_healthy_s:.1f} s after launch "
                 f"({unhealthy} non-200 answers before it), worker READY at "
                 f"{'-' if self.ready_s is None else f'{self.ready_s:.1f}'} s",
                 "  request  sent (s after the first 200)  status  latency (s)"]
        lines += [f"  {i + 1:7d}  {sent:30.1f}  {str(status):>6}  {latency:11.2f}"
                  for i, (sent, status, latency) in enumerate(self.answers)]
        return "\n".join(lines)


def ping(url: str) -> tuple[int | None, dict | None]:
    try:
        response = requests.get(f"{url}/ping", timeout=2)
        return response.status_code, response.json()
    except (requests.RequestException, ValueError):
        return None, None


def measure(name: str, url: str, management_url: str, model: str, launched: float, image: bytes,
            alive) -> Run:
    """Polls /ping from launch until its first 200, then sends REQUESTS to `model`, SPACING_S apart."""
    run = Run(name)
    management = Management(management_url, timeout_s=2)
    done = threading.Event()

    def watch_ready():
        while not done.is_set() and run.ready_s is None:
            if management.ready(model):
                run.ready_s = time.monotonic() - launched
            time.sleep(0.1)

    watcher = threading.Thread(target=watch_ready, daemon=True)
    watcher.start()
    try:
        while True:
            assert alive(), f"{name}: the server exited before /ping said Healthy"
            assert time.monotonic() - launched < DEADLINE_S, f"{name}: /ping never said Healthy: {run.pings[-5:]}"
            at = time.monotonic() - launched
            status, body = ping(url)
            if status == 200:
                run.first_healthy_s = at
                assert body == {"status": "Healthy"}
                break
            run.pings.append((at, status, body))
            time.sleep(0.1)
        first = time.monotonic()
        run.ready_at_first_healthy = management.ready(model)

        def predict(i: int) -> tuple[float, int | None, float]:
            time.sleep(max(0.0, first + i * SPACING_S - time.monotonic()))
            sent = time.monotonic()
            try:
                status = requests.post(f"{url}/predictions/{model}", data=image, timeout=60).status_code
            except requests.RequestException:
                status = None
            return sent - first, status, time.monotonic() - sent

        with ThreadPoolExecutor(REQUESTS) as pool:
            run.answers = list(pool.map(predict, range(REQUESTS)))
    finally:
        done.set()
        watcher.join(timeout=5)
    print(f"\n{run.table()}")
    return run


def test_torchserves_own_ping_says_healthy_while_the_worker_loads_and_requests_wait(slow_store, image):
    """Before: TorchServe's /ping with the models given at launch (no marker variables), as a task
    behind the load balancer had it: Healthy within seconds, requests then wait for the load."""
    server = TorchServe(slow_store, {"slow": "slow-v1.0.mar"}, Ports.free())
    launched = time.monotonic()
    try:
        server.launch()
        run = measure("before", server.url(), server.url("management"), "slow", launched, image,
                      lambda: server.process.poll() is None)
    finally:
        server.stop()
        server.cleanup()
    assert not run.ready_at_first_healthy
    assert run.ready_s is not None and run.ready_s - run.first_healthy_s >= LOAD_S / 2
    sent, status, latency = run.answers[0]
    assert latency >= LOAD_S / 2 or status != 200, run.table()


def test_the_entrypoints_ping_says_healthy_only_once_the_worker_is_ready_and_unhealthy_once_it_drains(
        slow_store, image):
    """After: scripts/server.py, the container's entrypoint: /ping is a JSON 503 while the worker
    loads, every request sent from its first 200 is answered 200 at once, and SIGTERM makes it a
    503 again at once (the drain keeps the server up for its grace)."""
    ports = Ports.free()
    command = [sys.executable, str(ROOT / "scripts" / "server.py"), "--model-store", str(slow_store),
               "--models", "slow=slow-v1.0.mar", "--drain-grace-s", "3", "--drain-timeout-s", "20",
               *(f"--{name.replace('_', '-')}-port={port}" for name, port in vars(ports).items())]
    url = f"http://127.0.0.1:{ports.inference}"
    launched = time.monotonic()
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(server.stdout), daemon=True)
    reader.start()
    try:
        run = measure("after", url, f"http://127.0.0.1:{ports.management}", "slow", launched, image,
                      lambda: server.poll() is None)
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        while (answer := ping(url))[0] != 503 and time.monotonic() - signalled < 10:
            time.sleep(0.02)
        to_unhealthy_s = time.monotonic() - signalled
        print(f"after: SIGTERM -> /ping {answer[0]} in {to_unhealthy_s:.2f} s: {answer[1]}")
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        reader.join(timeout=10)
    log = "".join(output)
    assert server.returncode == 0, log
    starting = [body for _, status, body in run.pings if status is not None]
    assert starting, f"/ping never answered before it said Healthy: {run.pings}"
    assert all(body["status"] == "Unhealthy" and body["reason"].startswith("starting") for body in starting), \
        starting
    assert {status for _, status, _ in run.pings} <= {None, 503}
    assert run.ready_at_first_healthy and run.first_healthy_s >= LOAD_S, run.table()
    assert all(status == 200 and latency < 5 for _, status, latency in run.answers), run.table()
    assert answer[0] == 503 and answer[1]["status"] == "Unhealthy" and answer[1]["reason"].startswith("draining")
    assert to_unhealthy_s < 2.0, log  # at once: a health check comes every 15 s
