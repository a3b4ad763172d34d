"""Render: Detections drawn on the image, as a JPEG (the response when a request asks render=true)."""

import io

from PIL import Image
from torchvision.utils import draw_bounding_boxes

from .decode import DecodedImage
from .detections import Detections

# Distinct colours that white captions read on. A class has one colour wherever it is drawn: this
# table and `colour` are written out again in objdetect_client.render (a client's --render), since
# neither package may import the other, and tests/test_render.py holds the two equal.
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324",
           "#469990", "#800000", "#808000", "#000075")


def colour(class_id: int) -> str:
    """The colour of a class: the palette, cycled by class id."""
    return PALETTE[class_id % len(PALETTE)]


def render_jpeg(image: DecodedImage, detections: Detections, quality: int = 90) -> bytes:
    """Boxes and "label score" captions on the decoded pixels (boxes mapped from original pixels)."""
    sx, sy = image.scale
    on_pixels = detections.scaled(1 / sx, 1 / sy)
    colours = [colour(i) for i in on_pixels.class_ids.tolist()]
    drawn = draw_bounding_boxes(
        image.pixels.cpu(), on_pixels.boxes,
        labels=[f"{label} {score:.2f}" for label, score in zip(on_pixels.labels, on_pixels.scores.tolist())],
        colors=colours, width=max(2, round(max(image.pixels.shape[1:]) / 400)),
        label_colors="white", label_background_colors=colours, fill_labels=True,
    ) if len(on_pixels) else image.pixels.cpu()
    buffer = io.BytesIO()
    Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
