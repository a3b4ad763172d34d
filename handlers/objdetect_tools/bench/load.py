"""The load: the images each workload sends, the senders, and the closed loop that drives them.

A sender is a callable that sends one payload and says whether it was answered well, noting in
its Answers why not (or a sample of what came back). The clients are threads, not locust (whose
gevent monkey-patching would make `direct`'s threads greenlets on one OS thread).
"""

from __future__ import annotations

import contextlib
import io
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import requests
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from objdetect_tools.workloads import Payload, answer_problem, photo

from .results import RunSummary, VariantResult

WORKLOADS = ("small", "phone", "mixed")
MIXED_SIZES = ((640, 480, "JPEG"), (1280, 960, "JPEG"), (4032, 3024, "JPEG"), (800, 600, "PNG"))
# Seeds for workload images: far from those training (0 up) and the tests (1e9, 2e9 up) draw.
IMAGE_SEED = 3_000_000_000
REQUEST_TIMEOUT_S = 120  # a client's wait for an answer, and the servers' responseTimeout

Send = Callable[[Payload], bool]


def workload_images(workload: str, count: int) -> list[Payload]:
    """`count` distinct images of the workload; for `mixed`, consecutive images differ in size."""
    payloads = []
    for i in range(count):
        seed = IMAGE_SEED + 1000 * WORKLOADS.index(workload) + i
        width, height, fmt = {"small": (640, 480, "JPEG"), "phone": (4032, 3024, "JPEG"),
                              "mixed": MIXED_SIZES[i % len(MIXED_SIZES)]}[workload]
        payloads.append(photo(width, height, seed, fmt))
    return payloads


# ---------------------------------------------------------------- answers

def stock_answer_ok(body: Any) -> bool:
    """The object_detector's format: [{"<label>": [x1, y1, x2, y2], "score": s}, ...]."""
    if not isinstance(body, list):
        return False
    for detection in body:
        if not isinstance(detection, dict) or len(detection) != 2 or not isinstance(detection.get("score"), float):
            return False
        (box,) = (v for k, v in detection.items() if k != "score")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            return False
    return True


# Whether a server variant's 200 answer to the payload is in its format (ours: the size checked too).
ANSWER_CHECKS: dict[str, Callable[[Any, Payload], bool]] = {
    "stock": lambda body, _payload: stock_answer_ok(body),
    "ours": lambda body, payload: answer_problem(body, payload) is None,
}


@dataclass
class Answers:
    """What one variant got in one cell, over its runs: error statuses, a sample answer, and our
    handler's own per-stage timings_ms, one per answer. Shared by the clients' threads."""

    statuses: Counter = field(default_factory=Counter)
    example: Any = None
    timings: list[dict] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def failed(self, status: str) -> bool:
        with self._lock:
            self.statuses[status] += 1
        return False

    def answered(self, answer: Any, timings: dict | None = None) -> bool:
        with self._lock:
            if self.example is None or (not self.example and answer):
                self.example = answer  # prefer an answer that found something
            if timings is not None:
                self.timings.append(timings)
        return True


# ---------------------------------------------------------------- senders

def http_sender(url: str, check: Callable[[Any, Payload], bool], answers: Answers) -> Send:
    """POSTs the image to a server, one requests.Session per client thread."""
    local = threading.local()

    def send(payload: Payload) -> bool:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        try:
            response = session.post(url, data=payload.data, headers={"Content-Type": payload.content_type},
                                    timeout=REQUEST_TIMEOUT_S)
        except requests.RequestException as error:
            return answers.failed(type(error).__name__)
        if response.status_code != 200:
            return answers.failed(str(response.status_code))
        try:
            body = response.json()
        except ValueError:
            return answers.failed("not JSON")
        if not check(body, payload):
            return answers.failed("wrong format")
        if isinstance(body, list):
            return answers.answered(body)
        timings = body.get("timings_ms")
        return answers.answered(body.get("detections"), timings if isinstance(timings, dict) else None)

    return send


def direct_sender(model: torch.nn.Module, serial: bool, threads: int, answers: Answers) -> Send:
    """PIL decode -> pil_to_tensor -> float / 255 -> model([tensor]) in this process, no server, on
    `threads` torch threads (set on each call: variants take turns in one process).
    `serial`: the clients take turns (a queue in front of one loop) instead of sharing the model."""
    turn = threading.Lock() if serial else contextlib.nullcontext()

    def send(payload: Payload) -> bool:
        torch.set_num_threads(threads)
        try:
            with turn, torch.inference_mode():
                image = Image.open(io.BytesIO(payload.data)).convert("RGB")
                tensor = pil_to_tensor(image).float() / 255
                output = model([tensor])[0]
        except Exception as error:  # a failure counts as an error, like a server's 5xx
            return answers.failed(type(error).__name__)
        return answers.answered({"detections": len(output["scores"])})

    return send


# ---------------------------------------------------------------- the closed loop

@dataclass
class Run:
    latencies_s: list[float]
    errors: int
    wall_s: float

    def summary(self) -> RunSummary:
        answered = len(self.latencies_s)
        ms = np.array(self.latencies_s) * 1000
        return RunSummary(
            throughput=answered / self.wall_s if self.wall_s > 0 else 0.0,
            p50_ms=float(np.percentile(ms, 50)) if answered else None,
            p99_ms=float(np.percentile(ms, 99)) if answered else None,
            errors=self.errors,
            requests=answered + self.errors,
            wall_s=round(self.wall_s, 3),
        )


def closed_loop(send: Send, payloads: list[Payload], concurrency: int, seconds: float, min_requests: int) -> Run:
    """`concurrency` clients, each sending its next image as soon as the last is answered, until
    `seconds` have passed and each has sent at least `min_requests`. Client k's i-th image is
    payloads[(k + i) % len]: at any moment the clients send different images. All start at once."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    start_line = threading.Barrier(concurrency + 1)
    clock: dict[str, float] = {}

    def client(k: int) -> None:
        start_line.wait()
        i = 0
        while i < min_requests or time.perf_counter() < clock["deadline"]:
            payload = payloads[(k + i) % len(payloads)]
            began = time.perf_counter()
            if send(payload):
                latencies[k].append(time.perf_counter() - began)
            else:
                errors[k] += 1
            i += 1

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    clock["start"] = time.perf_counter()
    clock["deadline"] = clock["start"] + seconds
    start_line.wait()
    for thread in threads:
        thread.join()
    return Run([v for per_client in latencies for v in per_client], sum(errors), time.perf_counter() - clock["start"])


def median_of_runs(runs: list[RunSummary], answers: Answers) -> VariantResult:
    """Median of the runs for rates and latencies; errors and requests summed over them; the
    answers' error statuses, first detections and the median of the handler's own timings."""
    def median(key: str) -> float | None:
        values = [getattr(run, key) for run in runs if getattr(run, key) is not None]
        return statistics.median(values) if values else None

    example = answers.example[:3] if isinstance(answers.example, list) else answers.example
    return VariantResult(median("throughput"), median("p50_ms"), median("p99_ms"),
                         sum(run.errors for run in runs), sum(run.requests for run in runs),
                         dict(answers.statuses), median_timings(answers.timings) if answers.timings else None,
                         list(runs), example)


def median_timings(timings: list[dict]) -> dict[str, float]:
    """Median per stage of the handler's own timings_ms: where the served time goes."""
    keys = dict.fromkeys(k for t in timings for k, v in t.items() if isinstance(v, (int, float)))
    return {k: round(statistics.median(t[k] for t in timings if isinstance(t.get(k), (int, float))), 2) for k in keys}
