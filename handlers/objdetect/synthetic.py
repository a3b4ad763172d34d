"""Labelled images of filled shapes, to train and evaluate the embedded model.

The distribution is the embedded model's contract: filled circles, axis-aligned squares and
triangles of any colour, 16-250 px, up to 6 per image, possibly touching the image edge, on
noisy or cluttered backgrounds, images 64-1024 px a side. Every image is a pure function of
its seed, so a test can draw images the model never saw by choosing a seed training never used.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

SHAPE_CLASSES = ("circle", "square", "triangle")
SIDE_RANGE = (64, 1024)
SHAPE_SIZE_RANGE = (16, 250)
# A shape must differ this much (RGB distance) from the background under it: a label for
# an invisible shape would teach nothing and test nothing.
MIN_CONTRAST = 60.0
# An image (946x361, 6 shapes) that training never drew and the embedded model gets exactly right:
# the one sample the API tests, `make image-test` and `make cold-start` send.
SAMPLE_SEED = 2_000_000_027


@dataclass(frozen=True)
class Sample:
    image: Image.Image
    boxes: list[tuple[float, float, float, float]]  # x1, y1, x2, y2 in pixels
    labels: list[str]

    def target(self) -> dict[str, torch.Tensor]:
        """The labels as torchvision's detection models take them in training (and torchmetrics
        in evaluation): boxes (N, 4) and class ids, background being 0."""
        return {"boxes": torch.tensor(self.boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor([SHAPE_CLASSES.index(label) + 1 for label in self.labels], dtype=torch.int64)}


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    """`image` as the bytes of a `fmt` file (Pillow's format names and save options)."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def generate(seed: int, max_shapes: int = 6) -> Sample:
    """Draw one image with 1..max_shapes shapes; the same seed always gives the same image."""
    rng = np.random.default_rng(seed)
    width, height = (int(v) for v in rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1, size=2))
    background = _background(rng, width, height)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    boxes: list[tuple[float, float, float, float]] = []
    labels: list[str] = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        kind = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
        placed = _place(rng, kind, width, height, boxes)
        if placed is None:
            continue
        box, outline = placed
        region = background[int(box[1]) : int(math.ceil(box[3])), int(box[0]) : int(math.ceil(box[2]))]
        colour = _contrasting_colour(rng, region.reshape(-1, 3).mean(axis=0))
        if kind == "circle":
            draw.ellipse(outline, fill=colour)
        elif kind == "square":
            draw.rectangle(outline, fill=colour)
        else:
            draw.polygon(outline, fill=colour)
        boxes.append(box)
        labels.append(kind)
    return Sample(image, boxes, labels)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A plain, gradient or blotchy base, sometimes cluttered with strokes, usually noisy."""
    style = int(rng.integers(3))
    if style == 0:
        base = np.broadcast_to(rng.uniform(0, 255, 3), (height, width, 3)).astype(np.float32)
    elif style == 1:
        start, end = rng.uniform(0, 255, (2, 3))
        t = np.linspace(0, 1, width if rng.random() < 0.5 else height, dtype=np.float32)
        ramp = start + (end - start) * t[:, None]
        base = np.broadcast_to(ramp[None] if len(t) == width else ramp[:, None], (height, width, 3))
        base = base.astype(np.float32)
    else:
        cells = rng.uniform(0, 255, (int(rng.integers(2, 9)), int(rng.integers(2, 9)), 3))
        blotches = Image.fromarray(cells.astype(np.uint8)).resize((width, height), Image.BICUBIC)
        base = np.asarray(blotches, dtype=np.float32)
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        _clutter(rng, ImageDraw.Draw(image), width, height)
    pixels = np.asarray(image, dtype=np.float32)
    if rng.random() < 0.8:
        pixels = pixels + rng.normal(0, rng.uniform(3, 30), pixels.shape).astype(np.float32)
    return pixels.clip(0, 255).astype(np.uint8)


def _clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, width: int, height: int) -> None:
    """Lines, arcs and specks: edges and colours that are not shapes."""
    for _ in range(int(rng.integers(3, 25))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x1, x2 = sorted(rng.uniform(0, width, 2))
        y1, y2 = sorted(rng.uniform(0, height, 2))
        kind = rng.random()
        if kind < 0.5:
            draw.line([(x1, y1), (x2, y2)] if rng.random() < 0.5 else [(x1, y2), (x2, y1)],
                      fill=colour, width=int(rng.integers(1, 4)))
        elif kind < 0.8 and x2 - x1 > 2 and y2 - y1 > 2:
            start = float(rng.uniform(0, 360))
            draw.arc([x1, y1, x2, y2], start, start + float(rng.uniform(30, 200)),
                     fill=colour, width=int(rng.integers(1, 3)))
        else:
            radius = float(rng.uniform(1, 3))
            draw.ellipse([x1 - radius, y1 - radius, x1 + radius, y1 + radius], fill=colour)


def _place(rng: np.random.Generator, kind: str, width: int, height: int,
           taken: list[tuple[float, float, float, float]]):
    """A box for a new shape that overlaps none already placed, and the outline to draw it."""
    largest = min(SHAPE_SIZE_RANGE[1], width, height)
    for _ in range(30):
        size = float(np.exp(rng.uniform(math.log(SHAPE_SIZE_RANGE[0]), math.log(largest))))
        if kind == "triangle":
            points = _triangle(rng, size)
            w = max(p[0] for p in points) + 1  # + 1: the last vertex's pixel is filled too
            h = max(p[1] for p in points) + 1
        else:
            w = h = round(size)
        # On each axis one shape in four sits against an edge: edge-touching shapes are common.
        x = 0.0 if rng.random() < 0.125 else float(width - w) if rng.random() < 0.143 else float(rng.uniform(0, width - w))
        y = 0.0 if rng.random() < 0.125 else float(height - h) if rng.random() < 0.143 else float(rng.uniform(0, height - h))
        x, y = math.floor(x), math.floor(y)
        box = (float(x), float(y), float(x + w), float(y + h))
        if any(box[0] < t[2] + 2 and t[0] < box[2] + 2 and box[1] < t[3] + 2 and t[1] < box[3] + 2 for t in taken):
            continue
        if kind == "triangle":
            return box, [(x + px, y + py) for px, py in points]
        return box, [x, y, x + w - 1, y + h - 1]
    return None


def _triangle(rng: np.random.Generator, size: float) -> list[tuple[float, float]]:
    """A rotated, jittered triangle whose bounding box's longer side is `size`, at the origin."""
    angles = rng.uniform(0, 2 * math.pi) + np.array([0, 2 * math.pi / 3, 4 * math.pi / 3])
    angles = angles + rng.uniform(-0.35, 0.35, 3)
    xs, ys = np.cos(angles), np.sin(angles)
    xs, ys = xs - xs.min(), ys - ys.min()
    scale = (size - 1) / max(xs.max(), ys.max())
    return [(float(px * scale), float(py * scale)) for px, py in zip(xs, ys)]


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    for _ in range(50):
        colour = rng.integers(0, 256, 3)
        if np.linalg.norm(colour - under) >= MIN_CONTRAST:
            break
    else:  # a mid-grey background: the far corner of the colour cube always contrasts
        colour = np.where(under < 128, 255, 0)
    return tuple(int(c) for c in colour)
