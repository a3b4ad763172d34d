"""Locust load for objdetect: the request mix real clients send, every answer checked.

    locust -f scripts/locustfile.py --host http://127.0.0.1:8080      (or: make loadtest)

The mix: raw JPEGs (640x480, 1280x960 and 4032x3024 phone photos), PNGs, and JSON with base64.
A response counts as a success only when it is 200 and its JSON has our answer's keys and the
image's size; anything else is a failure, whatever its status. Environment:
OBJDETECT_MODEL (default detector), OBJDETECT_API_KEY (sent as X-API-Key when set),
OBJDETECT_RATE (requests per second per user: a fixed rate, for soak runs; default: as fast as
answers come), OBJDETECT_LATENCY_LOG (a file that gets one latency in ms per line).
"""

from __future__ import annotations

import base64
import os

from locust import HttpUser, constant, constant_throughput, events, task

from objdetect_tools.workloads import Payload, answer_problem, photo  # absolute: locust loads this file by path

MODEL = os.environ.get("OBJDETECT_MODEL", "detector")
SMALL, MEDIUM, PHONE, PNG = (photo(640, 480, 1), photo(1280, 960, 2), photo(4032, 3024, 3),
                             photo(800, 600, 4, "PNG"))  # built once per locust process
LATENCY_LOG = os.environ.get("OBJDETECT_LATENCY_LOG")


@events.request.add_listener
def log_latency(response_time, exception, **_):
    if LATENCY_LOG and exception is None:
        with open(LATENCY_LOG, "a") as log:
            log.write(f"{response_time:.2f}\n")


class Client(HttpUser):
    wait_time = constant_throughput(float(os.environ["OBJDETECT_RATE"])) if os.environ.get("OBJDETECT_RATE") else constant(0)

    def on_start(self):
        key = os.environ.get("OBJDETECT_API_KEY")
        if key:
            self.client.headers["X-API-Key"] = key

    def _predict(self, payload: Payload, name: str | None = None, **kwargs):
        """Sends `payload` (as the raw body, unless kwargs say otherwise) and checks the answer."""
        request = kwargs or {"data": payload.data, "headers": {"Content-Type": payload.content_type}}
        with self.client.post(f"/predictions/{MODEL}", name=name or payload.name, catch_response=True, timeout=120,
                              **request) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            try:
                problem = answer_problem(response.json(), payload)
            except ValueError:
                problem = "not JSON"
            if problem:
                response.failure(f"wrong answer: {problem}")
            else:
                response.success()

    @task(4)
    def jpeg_small(self):
        self._predict(SMALL)

    @task(2)
    def jpeg_medium(self):
        self._predict(MEDIUM)

    @task(1)
    def jpeg_phone(self):
        self._predict(PHONE)

    @task(1)
    def png(self):
        self._predict(PNG)

    @task(2)
    def json_base64(self):
        self._predict(SMALL, "json b64 640x480", json={"b64": base64.b64encode(SMALL.data).decode(), "threshold": 0.3})
