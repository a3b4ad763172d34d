"""The images that load tests and benchmarks send, and how an answer of ours is checked.

Generated shapes on busy backgrounds with sensor-like noise, so that they compress as real
photos do (a 4032x3024 JPEG at quality 90 is about 3 MB): the same seed is the same image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from objdetect import synthetic

# Our API's answer (README, "The API").
ANSWER_KEYS = {"model", "version", "width", "height", "detections", "timings_ms"}


@dataclass(frozen=True)
class Payload:
    """An encoded image as a client sends it."""

    data: bytes
    content_type: str
    size: tuple[int, int]  # width, height: what a right answer reports

    @property
    def name(self) -> str:
        return f"{self.content_type.removeprefix('image/')} {self.size[0]}x{self.size[1]}"


def photo(width: int, height: int, seed: int, fmt: str = "JPEG") -> Payload:
    """A synthetic photo: shapes on a busy background, resized, with sensor-like noise."""
    image = synthetic.generate(seed).image.resize((width, height), Image.BILINEAR)
    noise = np.random.default_rng(seed).integers(-12, 13, (height, width, 3))
    noisy = Image.fromarray((np.asarray(image, dtype=np.int16) + noise).clip(0, 255).astype(np.uint8))
    data = synthetic.encode(noisy, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return Payload(data, f"image/{fmt.lower()}", (width, height))


def answer_problem(body: Any, payload: Payload) -> str | None:
    """What is wrong with `body` as our answer to `payload`, or None when it is right in form."""
    if not isinstance(body, dict) or set(body) != ANSWER_KEYS:
        return f"not our answer's keys: {str(body)[:200]}"
    if (body["width"], body["height"]) != payload.size:
        return f"answered size {body['width']}x{body['height']} for a {payload.size[0]}x{payload.size[1]} image"
    if not isinstance(body["detections"], list):
        return "detections is not a list"
    return None
