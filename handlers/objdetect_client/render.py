"""Annotated JPEGs: a Result's boxes and "label score" captions drawn on its image."""

from __future__ import annotations

import io
import re
from pathlib import Path

from PIL import Image, ImageColor, ImageDraw, ImageOps

from .result import Result

# Distinct colours that white captions read on. A class has one colour wherever it is drawn: this
# table and `colour` are those of the server's renderer (objdetect.render, a request's
# "render": true), written out here because the client imports nothing of the server's packages;
# tests/test_render.py holds the two equal.
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324",
           "#469990", "#800000", "#808000", "#000075")


def colour(class_id: int) -> str:
    """The colour of a class: the palette, cycled by class id."""
    return PALETTE[class_id % len(PALETTE)]


def render(image: bytes, result: Result, quality: int = 90) -> bytes:
    """The image upright (boxes are in the EXIF-rotated pixels the server answers in), boxes drawn."""
    with Image.open(io.BytesIO(image)) as opened:
        picture = ImageOps.exif_transpose(opened).convert("RGB")
    draw = ImageDraw.Draw(picture)
    width = max(2, round(max(picture.size) / 400))
    for detection in result.detections:
        fill = ImageColor.getrgb(colour(detection.class_id))
        x1, y1, x2, y2 = detection.box
        draw.rectangle((x1, y1, x2, y2), outline=fill, width=width)
        caption = f"{detection.label} {detection.score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), caption)
        lift = min(bottom - top + 2, y1)  # above the box, unless it touches the top
        draw.rectangle((left, top - lift, right + 2, bottom - lift), fill=fill)
        draw.text((x1 + 1, y1 - lift), caption, fill="white")
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def file_name(source: str) -> str:
    """A flat file name for a source's render: photos/cat.png -> photos_cat.png.jpg."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", re.sub(r"^[a-z0-9]+://", "", source)).strip("_") + ".jpg"


def save(image: bytes, result: Result, folder: Path) -> Path:
    path = folder / file_name(result.source)
    path.write_bytes(render(image, result))
    return path
