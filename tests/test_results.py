"""Detections, postprocessing and rendering: the one result type and what is done with it."""

import io

import pytest
import torch
from PIL import Image

from objdetect.decode import DecodedImage
from objdetect.detections import Detections
from objdetect.inputs import Options
from objdetect.postprocess import postprocess
from objdetect.render import render_jpeg

NAMES = ["__background__", "circle", "square", "triangle"]
OUTPUT = {  # as torchvision returns it, deliberately not sorted
    "boxes": torch.tensor([[10.0, 10.0, 20.0, 20.0], [30.0, 5.0, 60.0, 25.0], [0.0, 0.0, 5.0, 5.0]]),
    "scores": torch.tensor([0.6, 0.95, 0.2]),
    "labels": torch.tensor([1, 2, 3]),
}


def image_of(width, height, decoded_width=None, decoded_height=None):
    pixels = torch.zeros(3, decoded_height or height, decoded_width or width, dtype=torch.uint8)
    return DecodedImage(pixels, width, height)


def test_detections_are_sorted_by_score_and_named():
    detections = Detections.from_model_output(OUTPUT, NAMES)
    assert detections.scores.tolist() == pytest.approx([0.95, 0.6, 0.2])
    assert detections.labels == ("square", "circle", "triangle")
    assert detections.class_ids.tolist() == [2, 1, 3]


def test_json_form_is_rounded_and_complete():
    detections = Detections(torch.tensor([[1.23456, 2.0, 3.0, 4.98765]]), torch.tensor([0.987654]),
                            torch.tensor([2]), ("square",))
    assert detections.to_json() == [{"label": "square", "class_id": 2, "score": 0.9877,
                                     "box": [1.23, 2.0, 3.0, 4.99]}]


@pytest.mark.parametrize("options, labels", [
    (Options(threshold=0.5, max_detections=100), ["square", "circle"]),
    (Options(threshold=0.0, max_detections=100), ["square", "circle", "triangle"]),
    (Options(threshold=0.0, max_detections=2), ["square", "circle"]),
    (Options(threshold=0.0, max_detections=100, classes=frozenset({"triangle", "circle"})), ["circle", "triangle"]),
    (Options(threshold=0.99, max_detections=100), []),
])
def test_postprocess_applies_threshold_classes_and_cap(options, labels):
    detections = postprocess(OUTPUT, NAMES, image_of(100, 50), options)
    assert list(detections.labels) == labels
    assert all(score >= options.threshold for score in detections.scores.tolist())


def test_boxes_from_a_downscaled_decode_map_back_to_original_pixels():
    detections = postprocess(OUTPUT, NAMES, image_of(400, 200, 100, 50), Options(0.9, 100))
    assert detections.boxes.tolist() == [[120.0, 20.0, 240.0, 100.0]]


def test_render_draws_boxes_on_a_jpeg_of_the_image_size():
    image = image_of(200, 100)
    detections = Detections.from_model_output(OUTPUT, NAMES)
    jpeg = render_jpeg(image, detections)
    drawn = Image.open(io.BytesIO(jpeg))
    assert drawn.format == "JPEG" and drawn.size == (200, 100)
    rgb = drawn.convert("RGB")
    assert sum(rgb.getpixel((59, 15))) > 150  # the right edge of the "square" box is drawn
    assert sum(rgb.getpixel((150, 80))) < 30  # far from every box the image is untouched


def test_render_with_no_detections_is_the_plain_image():
    jpeg = render_jpeg(image_of(64, 32), Detections.from_model_output(
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}, NAMES))
    drawn = Image.open(io.BytesIO(jpeg))
    assert drawn.size == (64, 32) and drawn.convert("L").getextrema()[1] < 10
