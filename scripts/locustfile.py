"""Locust load for objdetect: the request mix real clients send, every answer checked.

    locust -f scripts/locustfile.py --host http://127.0.0.1:8080      (or: make loadtest)

The mix: raw JPEGs (640x480, 1280x960 and 4032x3024 phone photos), PNGs, and JSON with base64.
A response counts as a success only when it is 200 and its JSON has the schema and the image's
size; anything else is a failure, whatever its status. Environment:
OBJDETECT_MODEL (default detector), OBJDETECT_API_KEY (sent as X-API-Key when set),
OBJDETECT_RATE (requests per second per user: a fixed rate, for soak runs; default: as fast as
answers come), OBJDETECT_LATENCY_LOG (a file that gets one latency in ms per line).
"""

from __future__ import annotations

import base64
import io
import os
import sys
from pathlib import Path

import numpy as np
from locust import HttpUser, constant, constant_throughput, events, task
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "handlers"))
from objdetect import synthetic  # noqa: E402

MODEL = os.environ.get("OBJDETECT_MODEL", "detector")
SCHEMA = {"model", "version", "width", "height", "detections", "timings_ms"}


def photo(width: int, height: int, seed: int, fmt: str) -> bytes:
    """Shapes on a busy background with sensor-like noise: compresses like a real photo does."""
    image = synthetic.generate(seed).image.resize((width, height), Image.BILINEAR)
    noisy = np.asarray(image, dtype=np.int16) + np.random.default_rng(seed).integers(-12, 13, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


# name -> (encoded image, its size), built once per locust process.
IMAGES = {
    "jpeg 640x480": (photo(640, 480, 1, "JPEG"), (640, 480)),
    "jpeg 1280x960": (photo(1280, 960, 2, "JPEG"), (1280, 960)),
    "jpeg phone 4032x3024": (photo(4032, 3024, 3, "JPEG"), (4032, 3024)),
    "png 800x600": (photo(800, 600, 4, "PNG"), (800, 600)),
}
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

    def _predict(self, name: str, size: tuple[int, int], **kwargs):
        with self.client.post(f"/predictions/{MODEL}", name=name, catch_response=True, timeout=120, **kwargs) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            try:
                body = response.json()
            except ValueError:
                response.failure("not JSON")
                return
            if set(body) != SCHEMA or (body["width"], body["height"]) != size or not isinstance(body["detections"], list):
                response.failure(f"wrong answer: {str(body)[:200]}")
                return
            response.success()

    @task(4)
    def jpeg_small(self):
        self._predict("jpeg 640x480", IMAGES["jpeg 640x480"][1], data=IMAGES["jpeg 640x480"][0],
                      headers={"Content-Type": "image/jpeg"})

    @task(2)
    def jpeg_medium(self):
        self._predict("jpeg 1280x960", IMAGES["jpeg 1280x960"][1], data=IMAGES["jpeg 1280x960"][0],
                      headers={"Content-Type": "image/jpeg"})

    @task(1)
    def jpeg_phone(self):
        data, size = IMAGES["jpeg phone 4032x3024"]
        self._predict("jpeg phone 4032x3024", size, data=data, headers={"Content-Type": "image/jpeg"})

    @task(1)
    def png(self):
        data, size = IMAGES["png 800x600"]
        self._predict("png 800x600", size, data=data, headers={"Content-Type": "image/png"})

    @task(2)
    def json_base64(self):
        data, size = IMAGES["jpeg 640x480"]
        self._predict("json b64 640x480", size, json={"b64": base64.b64encode(data).decode(), "threshold": 0.3})
