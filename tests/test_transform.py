"""Transform and the speed path: what the model would shrink is shrunk early, and nothing moves."""

import json

import pytest
import torch
from PIL import Image

from conftest import SHAPE_LABELS, encode
from objdetect import synthetic
from objdetect.decode import DecodedImage
from objdetect.pipeline import Detector, Request
from objdetect.registry import architecture
from objdetect.settings import Settings
from objdetect.transform import fit_to_model, model_input_size, to_model_input


@pytest.mark.parametrize("width, height", [(4032, 3024), (640, 480), (300, 2000), (100, 80), (1333, 800)])
@pytest.mark.parametrize("arch", ["fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_resnet50_fpn_v2", "shapes"])
def test_model_input_size_is_the_size_torchvision_resizes_to(arch, width, height):
    transform = architecture(arch).build(num_classes=2).transform.eval()
    batch, _ = transform([torch.zeros(3, height, width)])
    expected = tuple(reversed(batch.image_sizes[0]))
    assert model_input_size(width, height, transform.min_size[-1], transform.max_size) == expected


def test_fit_to_model_shrinks_only_what_the_model_shrinks():
    big = DecodedImage(torch.zeros(3, 3024, 4032, dtype=torch.uint8), 4032, 3024)
    fitted = fit_to_model(big, 320, 640)
    assert fitted.pixels.shape == (3, 320, 426) and fitted.pixels.dtype == torch.uint8
    assert (fitted.width, fitted.height) == (4032, 3024)  # boxes still refer to the original
    small = DecodedImage(torch.zeros(3, 100, 80, dtype=torch.uint8), 80, 100)
    assert fit_to_model(small, 320, 640) is small


def test_to_model_input_scales_to_unit_floats():
    pixels = torch.tensor([[[0, 255]], [[51, 102]], [[204, 153]]], dtype=torch.uint8)
    out = to_model_input(pixels, torch.device("cpu"))
    assert out.dtype == torch.float32 and torch.allclose(out, pixels.float() / 255)


def test_a_photo_decoded_small_still_gets_boxes_in_its_own_pixels(shapes_model):
    """A 2048-px JPEG: drafted to 1/2 and pre-resized by the fast path, whole on the exact path.
    Both must find the same shapes at the same original-pixel places."""
    sample = synthetic.generate(2_000_000_027)
    photo = sample.image.resize((sample.image.width * 2, sample.image.height * 2), Image.NEAREST)
    data = encode(photo, "JPEG", quality=95)
    fast = Detector(shapes_model, SHAPE_LABELS, Settings.load({}, {}))
    exact = Detector(shapes_model, SHAPE_LABELS, fast.settings.exact())
    answers = [json.loads(d([Request({"body": data})])[0].body) for d in (fast, exact)]
    assert answers[0]["width"] == answers[1]["width"] == photo.width
    fast_found, exact_found = (sorted((d["label"], d["box"]) for d in a["detections"]) for a in answers)
    assert [label for label, _ in fast_found] == [label for label, _ in exact_found] == sorted(sample.labels)
    for (_, a), (_, b) in zip(fast_found, exact_found):
        assert max(abs(x - y) for x, y in zip(a, b)) < 6  # px, in a 1892-px-wide image
