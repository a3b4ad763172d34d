"""The worker's part of a drain (objdetect/drain.py), the server's part (objdetect_serving/drain.py)
against a fake TorchServe, and the device choice; the whole drain against a real server is in
test_faults.py."""

import contextlib
import itertools
import json
import math
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from objdetect.drain import HEADER, TOKEN_ENV, Drain
from objdetect.messages import Request, Response
from objdetect.predict import choose_device
from objdetect_serving import drain as server_drain

pytestmark = pytest.mark.unit


def served(requests):
    return [Response(200, b"served") for _ in requests]


def stop(token="secret"):
    return Request({"body": b""}, {HEADER: token})


def test_a_stop_request_is_answered_with_the_pid_its_batch_served_and_later_batches_refused():
    drain = Drain({TOKEN_ENV: "secret"})
    first = drain.answer([Request({"body": b"a"}), stop(), Request({"body": b"b"})], served)
    assert [r.body for r in first[::2]] == [b"served", b"served"]
    assert json.loads(first[1].body) == {"stopped": True, "pid": os.getpid()}
    later = drain.answer([Request({"body": b"c"}), stop()], served)
    assert {r.status for r in later} == {503}
    assert json.loads(later[0].body)["error"] == "shutting_down"


@pytest.mark.parametrize("environ, sent", [({TOKEN_ENV: "secret"}, "guess"), ({TOKEN_ENV: "secret"}, ""), ({}, "")],
                         ids=["wrong token", "empty token", "no token configured"])
def test_without_the_servers_token_a_request_is_only_a_request(environ, sent):
    drain = Drain(environ)
    assert [r.body for r in drain.answer([stop(sent)], served)] == [b"served"]
    assert not drain.stopped


def test_the_server_and_the_workers_speak_the_same_protocol():
    assert (server_drain.TOKEN_ENV, server_drain.HEADER) == (TOKEN_ENV, HEADER)


def test_require_cuda_refuses_a_machine_without_a_usable_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as a broken driver reports
    assert choose_device(0) == torch.device("cpu")
    with pytest.raises(RuntimeError, match="require_cuda is set but there is no usable GPU"):
        choose_device(0, require_cuda=True)


# --- the server's part, against a fake TorchServe -----------------------------------------------

TOKEN = "drain-token"


class FakeTorchServe:
    """TorchServe as the drain sees it, on two loopback servers. Management lists the models, their
    versions and their workers; the first `failing[kind]` calls of a kind ("models", "versions",
    "describe": GET /models/<name>/<version>) answer 500, after `slow_s` if set. Inference hands the
    requests of a version to its workers in turn, as TorchServe's queue does: a worker busy for
    `busy[pid]` seconds after the start answers only then, a stop request with its pid the first
    time and a 503 afterwards."""

    def __init__(self, workers: dict[tuple[str, str], list[int]], busy=None, failing=None, slow_s=0.0):
        self.workers, self.busy, self.failing, self.slow_s = workers, busy or {}, dict(failing or {}), slow_s
        self.started = time.monotonic()
        self.turns = {version: itertools.cycle(pids) for version, pids in workers.items()}
        self.stops: list[tuple[str, str]] = []  # (path, drain header) of each request the workers got
        self.answered: set[int] = set()  # the pids that answered a stop request
        self.closing = threading.Event()  # ends the waits of busy workers and slow answers
        self.lock = threading.Lock()
        self.management_url = self.inference_url = ""  # set by the fixture, once its servers listen

    def management(self, method, path, headers):
        parts = path.split("?")[0].strip("/").split("/")
        kind = "models" if len(parts) == 1 else "versions" if parts[2] == "all" else "describe"
        with self.lock:
            failing = self.failing.get(kind, 0) > 0
            self.failing[kind] = self.failing.get(kind, 0) - failing
        if failing:
            self.closing.wait(self.slow_s)
            return 500, {"code": 500, "type": "InternalServerException", "message": "busy"}
        if kind == "models":
            return 200, {"models": [{"modelName": n} for n in sorted({n for n, _ in self.workers})]}
        if kind == "versions":
            return 200, [{"modelName": n, "modelVersion": v} for n, v in self.workers if n == parts[1]]
        ready = [{"pid": pid, "status": "READY"} for pid in self.workers[parts[1], parts[2]]]
        # A worker that is not READY takes no requests: the drain must not wait for it.
        return 200, [{"modelName": parts[1], "modelVersion": parts[2],
                      "workers": ready + [{"pid": 999, "status": "UNLOADING"}]}]

    def inference(self, method, path, headers):
        name, version = path.split("/")[2:]
        with self.lock:
            self.stops.append((path, headers.get(server_drain.HEADER)))
            pid = next(self.turns[name, version])
        busy_s = self.busy.get(pid, 0) - (time.monotonic() - self.started)
        self.closing.wait(None if busy_s == math.inf else max(0.0, busy_s))
        with self.lock:
            if pid in self.answered:
                return 503, {"code": 503, "type": "shutting_down", "message": "shutting down"}
            self.answered.add(pid)
        return 200, {"stopped": True, "pid": pid}

    def drain(self, timeout_s: float = 10.0) -> tuple[list[str], float]:
        """The drain's log lines, and how long it took."""
        lines: list[str] = []
        started = time.monotonic()
        server_drain.drain(self.inference_url, self.management_url, TOKEN,
                           server_drain.DrainPolicy(grace_s=0, timeout_s=timeout_s), log=lines.append)
        return lines, time.monotonic() - started


@contextlib.contextmanager
def loopback_server(answer):
    """A server on 127.0.0.1 that answers each request with answer(method, path, headers) ->
    (status, JSON body); yields its URL, and stops it."""
    class Handler(BaseHTTPRequestHandler):
        def respond(self):
            status, body = answer(self.command, self.path, self.headers)
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped waiting: its timeout, or the deadline

        do_GET = do_POST = respond

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture()
def torchserve():
    """Starts FakeTorchServes, each on its two servers; stops them all after the test."""
    with contextlib.ExitStack() as stack:
        def start(*args, **kwargs) -> FakeTorchServe:
            fake = FakeTorchServe(*args, **kwargs)
            fake.management_url = stack.enter_context(loopback_server(fake.management))
            fake.inference_url = stack.enter_context(loopback_server(fake.inference))
            stack.callback(fake.closing.set)  # first on the way out: ends the handlers' waits
            return fake

        yield start


TWO_VERSIONS = {("detector", "1.0"): [101, 102], ("detector", "2.0"): [201]}
SUCCESS = re.compile(r"drain: workers of 2 model versions stopped taking requests in \d+\.\d s")


def assert_every_worker_stopped(fake, lines):
    assert fake.answered == {101, 102, 201}
    assert {path for path, _ in fake.stops} == {"/predictions/detector/1.0", "/predictions/detector/2.0"}
    assert {header for _, header in fake.stops} == {TOKEN}
    assert len(lines) == 1 and SUCCESS.fullmatch(lines[0]), lines


def test_the_drain_returns_only_once_every_ready_worker_has_answered_a_stop_request(torchserve):
    fake = torchserve(TWO_VERSIONS, busy={102: 0.5})
    lines, took = fake.drain()
    assert_every_worker_stopped(fake, lines)
    assert took >= 0.5  # it waited for the busy worker


@pytest.mark.parametrize("slow_s", [0.0, 1.0], ids=["500", "timeout"])
def test_a_management_error_listing_the_workers_is_asked_again_not_taken_for_no_workers(
        torchserve, monkeypatch, slow_s):
    if slow_s:
        monkeypatch.setattr(server_drain, "MANAGEMENT_TIMEOUT_S", 0.3)  # below slow_s: the call times out
    fake = torchserve(TWO_VERSIONS, failing={"describe": 3}, slow_s=slow_s)
    lines, _ = fake.drain()
    assert_every_worker_stopped(fake, lines)
    assert fake.failing["describe"] == 0  # the drain did meet the errors


@pytest.mark.parametrize("kind", ["models", "versions"])
def test_a_management_error_listing_the_models_is_asked_again(torchserve, kind):
    fake = torchserve(TWO_VERSIONS, failing={kind: 2})
    lines, _ = fake.drain()
    assert_every_worker_stopped(fake, lines)


WORKERS_UNKNOWN = r"drain: could not list the workers of detector v{v} before the deadline \({error}\); stopping anyway"


@pytest.mark.parametrize("kind, slow_s, logged", [
    ("describe", 0.0, [WORKERS_UNKNOWN.format(v=v, error=rf"TorchServe refused GET /models/detector/{v}: "
                                                         r"HTTP 500: busy") for v in ("1.0", "2.0")]),
    # 5 s is past the 3 s that a call may take, which the drain cuts to the 1 s left.
    ("describe", 5.0, [WORKERS_UNKNOWN.format(v=v, error=rf"GET /models/detector/{v} took longer than \d s")
                       for v in ("1.0", "2.0")]),
    ("models", 0.0, [r"drain: could not list the models before the deadline "
                     r"\(TorchServe refused GET /models: HTTP 500: busy\); stopping without draining"]),
], ids=["workers 500", "workers timeout", "models 500"])
def test_when_management_keeps_failing_the_drain_stops_at_the_deadline_and_says_so(torchserve, kind, slow_s, logged):
    fake = torchserve(TWO_VERSIONS, failing={kind: math.inf}, slow_s=slow_s)
    lines, took = fake.drain(timeout_s=1.0)
    assert took < 1.0 + 0.5
    assert len(lines) == len(logged) and all(map(re.fullmatch, logged, lines)), lines
    assert fake.stops == []  # no worker known, none sent to


def test_a_worker_that_never_answers_is_given_up_at_the_deadline_and_named(torchserve):
    fake = torchserve(TWO_VERSIONS, busy={102: math.inf})
    lines, took = fake.drain(timeout_s=1.0)
    assert took < 1.0 + 0.5
    assert lines == ["drain: detector v1.0: workers [102] still busy at the deadline; stopping anyway"]
    assert fake.answered == {101, 201}
