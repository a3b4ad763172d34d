"""Render: the detections drawn on the image the model saw, as a JPEG."""

import io

import pytest
import torch
from PIL import Image

from objdetect.detections import Detections
from objdetect.render import render_jpeg

pytestmark = pytest.mark.unit


def test_render_draws_boxes_on_a_jpeg_of_the_image_size(shapes_labels, model_output, decoded_image):
    image = decoded_image(200, 100)
    detections = Detections.from_model_output(model_output, shapes_labels)
    jpeg = render_jpeg(image, detections)
    drawn = Image.open(io.BytesIO(jpeg))
    assert drawn.format == "JPEG" and drawn.size == (200, 100)
    rgb = drawn.convert("RGB")
    assert sum(rgb.getpixel((59, 15))) > 150  # the right edge of the "square" box is drawn
    assert sum(rgb.getpixel((150, 80))) < 30  # far from every box the image is untouched


def test_render_with_no_detections_is_the_plain_image(shapes_labels, decoded_image):
    jpeg = render_jpeg(decoded_image(64, 32), Detections.from_model_output(
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}, shapes_labels))
    drawn = Image.open(io.BytesIO(jpeg))
    assert drawn.size == (64, 32) and drawn.convert("L").getextrema()[1] < 10
