"""Postprocess: threshold, class filter and cap, and boxes mapped back to the original's pixels."""

import pytest

from objdetect.inputs import Options
from objdetect.postprocess import postprocess

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("options, labels", [
    (Options(threshold=0.5, max_detections=100), ["square", "circle"]),
    (Options(threshold=0.0, max_detections=100), ["square", "circle", "triangle"]),
    (Options(threshold=0.0, max_detections=2), ["square", "circle"]),
    (Options(threshold=0.0, max_detections=100, classes=frozenset({"triangle", "circle"})), ["circle", "triangle"]),
    (Options(threshold=0.99, max_detections=100), []),
])
def test_postprocess_applies_threshold_classes_and_cap(options, labels, shapes_labels, model_output, decoded_image):
    detections = postprocess(model_output, shapes_labels, decoded_image(100, 50), options)
    assert list(detections.labels) == labels
    assert all(score >= options.threshold for score in detections.scores.tolist())


def test_boxes_from_a_downscaled_decode_map_back_to_original_pixels(shapes_labels, model_output, decoded_image):
    detections = postprocess(model_output, shapes_labels, decoded_image(400, 200, 100, 50), Options(0.9, 100))
    assert detections.boxes.tolist() == [[120.0, 20.0, 240.0, 100.0]]
