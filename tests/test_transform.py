"""Transform and the speed path: what the model would shrink is shrunk early, and nothing moves."""

import json

import pytest
import torch
from PIL import Image

from objdetect import synthetic
from objdetect.decode import DecodedImage
from objdetect.errors import RequestError
from objdetect.model_spec import ModelSpec
from objdetect.pipeline import Detector, Request
from objdetect.transform import check_shape, shrink_to_model, to_model_input

pytestmark = pytest.mark.unit


def blank(width, height) -> DecodedImage:
    return DecodedImage(torch.zeros(3, height, width, dtype=torch.uint8), width, height)


def test_shrink_to_model_shrinks_only_what_the_model_shrinks():
    spec = ModelSpec(min_size=320, max_size=640, max_detections=100)
    fitted = shrink_to_model(blank(4032, 3024), spec)
    assert fitted.pixels.shape == (3, 320, 426) and fitted.pixels.dtype == torch.uint8
    assert (fitted.width, fitted.height) == (4032, 3024)  # boxes still refer to the original
    small = blank(80, 100)
    assert shrink_to_model(small, spec) is small


def test_slivers_are_refused_and_long_images_up_to_the_limit_are_not():
    check_shape(blank(2000, 100))
    with pytest.raises(RequestError) as caught:
        check_shape(blank(2000, 99))
    assert caught.value.code == "bad_image_shape" and "2000x99" in caught.value.message


def test_to_model_input_scales_to_unit_floats():
    pixels = torch.tensor([[[0, 255]], [[51, 102]], [[204, 153]]], dtype=torch.uint8)
    out = to_model_input(pixels, torch.device("cpu"))
    assert out.dtype == torch.float32 and torch.allclose(out, pixels.float() / 255)


def test_a_photo_decoded_small_still_gets_boxes_in_its_own_pixels(shapes_model, shapes_labels, default_settings,
                                                                  exact_settings, shapes_openvino_ir):
    """A 2048-px JPEG: drafted to 1/2 and pre-resized by the fast path, whole on the exact path.
    Both must find the same shapes at the same original-pixel places."""
    sample = synthetic.generate(2_000_000_027)
    photo = sample.image.resize((sample.image.width * 2, sample.image.height * 2), Image.NEAREST)
    data = synthetic.encode(photo, "JPEG", quality=95)
    detectors = [Detector(shapes_model, shapes_labels, settings, openvino_ir=shapes_openvino_ir)
                 for settings in (default_settings, exact_settings)]
    answers = [json.loads(d([Request({"body": data})])[0].body) for d in detectors]
    assert answers[0]["width"] == answers[1]["width"] == photo.width
    fast_found, exact_found = (sorted((d["label"], d["box"]) for d in a["detections"]) for a in answers)
    assert [label for label, _ in fast_found] == [label for label, _ in exact_found] == sorted(sample.labels)
    for (_, a), (_, b) in zip(fast_found, exact_found):
        assert max(abs(x - y) for x, y in zip(a, b)) < 6  # px, in a 1892-px-wide image
