"""What production does to a server, against a real TorchServe: a burst far past the queue, clients
that never finish their headers, an oversize body, a worker killed under load, SIGTERM with requests
in flight, a GPU task without its GPU. Each test asserts what the clients saw, and that the server
serves afterwards. docs/operations.md "Reliability" lists the same faults and answers.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from objdetect import synthetic
from objdetect_serving.management import Management
from objdetect_serving.paths import ROOT
from objdetect_serving.torchserve import Ports, ServerError, TorchServe

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def image() -> bytes:
    buffer = io.BytesIO()
    synthetic.generate(seed=3).image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@dataclass
class Answer:
    sent: float  # time.monotonic()
    done: float
    status: int | None  # None: no HTTP answer (refused, reset)
    body: dict | None = None
    error: str = ""


class Traffic:
    """`clients` threads, each posting `image` to `url` until stopped, recording every answer."""

    def __init__(self, url: str, image: bytes, clients: int = 4, headers: dict | None = None):
        self.url, self.image, self.headers = url, image, headers or {}
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    response = session.post(self.url, data=self.image, headers=self.headers, timeout=60)
                    body = response.json() if response.content else None
                    self.answers.append(Answer(sent, time.monotonic(), response.status_code, body))
                except requests.RequestException as error:
                    self.answers.append(Answer(sent, time.monotonic(), None, error=type(error).__name__))
                    time.sleep(0.05)

    def __enter__(self) -> "Traffic":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)

    def statuses(self, since: float = 0.0, until: float = float("inf")) -> Counter:
        return Counter(a.status for a in self.answers if since <= a.sent < until)


def post(server_url: str, data: bytes, model: str = "detector", timeout: float = 60) -> requests.Response:
    return requests.post(f"{server_url}/predictions/{model}", data=data, timeout=timeout)


# --- the shared server: faults it survives without restarting anything ---------------------------

def test_a_burst_far_past_the_queue_gets_answers_or_a_json_503_and_none_hangs(server, image):
    """300 at once against job_queue_size=64: what does not fit is refused at once by the frontend."""
    with ThreadPoolExecutor(300) as pool:
        answers = list(pool.map(lambda _: post(server.url(), image, timeout=120), range(300)))
    statuses = Counter(a.status_code for a in answers)
    assert set(statuses) == {200, 503} and statuses[503] > 0, statuses
    refusal = next(a for a in answers if a.status_code == 503).json()
    assert refusal["code"] == 503 and refusal["type"] == "ServiceUnavailableException"
    assert post(server.url(), image).status_code == 200


def test_clients_that_never_finish_their_headers_do_not_hold_up_others(server, image):
    """200 sockets each with half a request sent: a normal request is still answered at once."""
    host, port = "127.0.0.1", server.ports.inference
    sockets = []
    try:
        for _ in range(200):
            sock = socket.create_connection((host, port), timeout=5)
            sock.sendall(b"POST /predictions/detector HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n")
            sockets.append(sock)
        started = time.monotonic()
        response = post(server.url(), image, timeout=30)
        assert response.status_code == 200 and response.json()["detections"]
        assert time.monotonic() - started < 10
    finally:
        for sock in sockets:
            sock.close()


def test_an_oversize_body_is_refused_with_413_by_the_frontend(server, image):
    """Bodies over max_request_size (20 MiB) never reach the handler: Netty answers 413 with an
    empty body (docs/api.md "Errors": the one refusal that is not JSON)."""
    response = post(server.url(), b"\xff" * (30 * 1024 * 1024))
    assert response.status_code == 413 and response.content == b""
    assert post(server.url(), image).status_code == 200


# --- a worker killed under load ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def crash_server(model_store):
    """A server of its own: killing its worker must not disturb the shared one's tests. Its model
    ("guarded") trusts image URLs on loopback and takes API key test-key."""
    with TorchServe(model_store, {"guarded": "guarded-v1.0.mar"}, Ports.free()) as ts:
        yield ts


@pytest.fixture()
def slow_image_host(image):
    """An image host on loopback that is slow to answer: a request for its image holds a worker
    in its fetch for seconds. Yields (URL, an Event set once the worker is waiting on it)."""
    asked = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self):
            asked.set()
            time.sleep(3)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(image)))
            self.end_headers()
            self.wfile.write(image)

        def log_message(self, *args):
            pass

    host = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{host.server_port}/photo.jpg", asked
    finally:
        host.shutdown()
        host.server_close()


def ready_workers(server: TorchServe, model: str) -> set[int]:
    management = Management(server.url("management"), timeout_s=3)
    return {w["pid"] for m in management.describe(model, "1.0") for w in m["workers"] if w["status"] == "READY"}


def worker_died(status: int) -> dict:
    """TorchServe's frontend's body for the requests a dead worker held."""
    return {"code": status, "type": "InternalServerException", "message": "Worker died."}


# SIGKILL's 507 is not certain: TorchServe's WorkerThread asks for the worker's exit code as soon as
# its socket closes, and when the JVM has not reaped the process yet there is none, so it answers 500
# (WorkerThread.run's finally; 3 of 16 kills here, 0 of 10 with the frontend's former per-request logging).
@pytest.mark.parametrize("sig, statuses", [(signal.SIGKILL, {507, 500}), (signal.SIGSEGV, {500})],
                         ids=["SIGKILL", "SIGSEGV"])
def test_a_killed_worker_is_replaced_and_the_requests_it_held_get_worker_died(crash_server, image, slow_image_host,
                                                                              sig, statuses):
    """SIGKILL is also what the kernel's OOM killer sends: TorchServe reads exit code 137 as out of
    memory and answers 507; any other death (a segfault) is 500. Both say "Worker died."; the
    requests queued behind are answered by the replacement worker."""
    url, key = f"{crash_server.url()}/predictions/guarded", {"X-API-Key": "test-key"}
    (victim,) = ready_workers(crash_server, "guarded")
    image_url, worker_fetching = slow_image_host
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(requests.post, url, json={"url": image_url}, headers=key, timeout=60)
        assert worker_fetching.wait(timeout=30)
        with Traffic(url, image, clients=3, headers=key) as traffic:
            time.sleep(0.5)  # their requests queue behind the held one
            killed = time.monotonic()
            os.kill(victim, sig)
            held_answer = held.result()
            deadline = time.monotonic() + 60
            while not traffic.statuses(since=killed).get(200) and time.monotonic() < deadline:
                time.sleep(0.2)
    assert held_answer.status_code in statuses and held_answer.json() == worker_died(held_answer.status_code)
    back = [a for a in traffic.answers if a.status == 200 and a.done > killed]
    assert back, f"nothing answered after the kill: {traffic.statuses()}"
    # Every client got an HTTP answer: a "Worker died." for what the worker held, else 200.
    assert set(traffic.statuses()) <= {200, *statuses}, traffic.statuses()
    assert all(a.body == worker_died(a.status) for a in traffic.answers if a.status != 200)
    replaced = ready_workers(crash_server, "guarded")
    assert replaced and victim not in replaced
    assert requests.post(url, data=image, headers=key, timeout=60).status_code == 200


# --- SIGTERM: the drain ----------------------------------------------------------------------------

def test_sigterm_answers_every_request_accepted_and_503s_later_ones_until_it_exits(model_store, image):
    """The container's entrypoint under load: every request sent before the signal is answered 200;
    after it, the health check fails, new requests get a JSON 503 `shutting_down` (never a refused
    connection) until the drain ends, and everything exits well within the task's stopTimeout."""
    ports = Ports.free()
    command = [sys.executable, str(ROOT / "scripts" / "server.py"), "--model-store", str(model_store),
               "--models", "exact=exact-v1.0.mar", "--drain-grace-s", "3", "--drain-timeout-s", "20",
               *(f"--{name.replace('_', '-')}-port={port}" for name, port in vars(ports).items())]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), line) for line in server.stdout),
                              daemon=True)
    reader.start()
    check = [sys.executable, str(ROOT / "scripts" / "server.py"), "--check", "exact",
             f"--management-port={ports.management}"]
    try:
        deadline = time.monotonic() + 180
        while not any("READY" in line for _, line in lines) and time.monotonic() < deadline:
            assert server.poll() is None, "".join(line for _, line in lines)
            time.sleep(0.2)
        assert subprocess.run(check, capture_output=True).returncode == 0

        with Traffic(f"http://127.0.0.1:{ports.inference}/predictions/exact", image, clients=6) as traffic:
            time.sleep(2)
            signalled = time.monotonic()
            server.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            draining = subprocess.run(check, capture_output=True, text=True)
            server.wait(timeout=60)
            exited = time.monotonic()
        reader.join(timeout=10)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    log = "".join(line for _, line in lines)
    assert server.returncode == 0, log
    assert draining.returncode == 1 and "draining" in draining.stdout
    assert exited - signalled < 20 + 15, log  # drain timeout + TorchServe's stop: within stopTimeout

    closing = next(t for t, line in lines if "stopping TorchServe" in line)
    before = [a for a in traffic.answers if a.sent < signalled]
    assert before and all(a.status == 200 for a in before), Counter(a.status for a in before)
    assert any(a.done > signalled for a in before)  # some were queued or in the worker at the signal
    after = [a for a in traffic.answers if signalled <= a.sent and a.done < closing]
    assert after and {a.status for a in after} <= {200, 503}, Counter(a.status for a in after)
    refused = [a for a in after if a.status == 503]
    assert refused and all(a.body == {"error": "shutting_down", "message": refused[0].body["message"],
                                      "request_id": a.body["request_id"]} and a.body["request_id"] for a in refused)
    # Connections fail only once TorchServe is being stopped, after the drain.
    assert all(a.sent >= closing - 0.5 for a in traffic.answers if a.status is None)
    assert "drain: workers of 1 model versions stopped taking requests" in log


# --- the wrong hardware ------------------------------------------------------------------------------

def test_require_cuda_without_a_gpu_keeps_the_worker_from_starting_and_the_health_check_failing(model_store):
    """What a GPU instance with a broken driver does with require_cuda on: its GPU hidden from the
    workers, as a broken driver hides it, so any host tests the path without one."""
    ts = TorchServe(model_store, {"exact": "exact-v1.0.mar"}, Ports.free(),
                    env={"OBJDETECT_REQUIRE_CUDA": "true", "CUDA_VISIBLE_DEVICES": ""})
    try:
        with pytest.raises(ServerError, match="no READY worker") as failure:
            ts.start(ready_timeout_s=30)
        assert "require_cuda is set but there is no usable GPU" in str(failure.value)
    finally:
        ts.stop()
        ts.cleanup()
