"""Transform and the speed path: what the model would shrink is shrunk early, and nothing moves."""

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from objdetect import synthetic
from objdetect.decode import DecodedImage
from objdetect.model_spec import ModelSpec
from objdetect.pipeline import Detector, Request
from objdetect.transform import is_sliver, pad_to_aspect, shrink_to_model, skip_identity_resize, to_model_input
from objdetect_tools.equivalence import calibrated_architecture, synthetic_image

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


@pytest.mark.parametrize("width, height", [(1, 65500), (65500, 1), (2, 65500), (3, 40000)])
def test_a_one_pixel_sliver_shrinks_along_its_length(width, height):
    """The model keeps a 1-pixel side at 1 pixel: the other side must shrink all the same, or the
    sliver is padded at full length (1x65500 became 3275x65500 floats, 2.6 GB)."""
    spec = ModelSpec(min_size=320, max_size=640, max_detections=100)
    fitted = shrink_to_model(blank(width, height), spec)
    assert max(fitted.pixels.shape[1:]) <= 640
    assert pad_to_aspect(to_model_input(fitted.pixels, torch.device("cpu")), spec).numel() <= 3 * 640 * 32


def test_slivers_are_padded_with_the_models_mean_colour_to_the_largest_aspect_ratio():
    spec = ModelSpec(min_size=320, max_size=640, max_detections=100)
    assert is_sliver(blank(2000, 99)) and is_sliver(blank(4, 81)) and not is_sliver(blank(2000, 100))
    wide = torch.rand(3, 10, 2000)
    padded = pad_to_aspect(wide, spec)
    assert padded.shape == (3, 100, 2000) and torch.equal(padded[:, :10], wide)  # below: the origin stays
    assert torch.allclose(padded[:, 10:], torch.tensor(spec.image_mean)[:, None, None].expand(3, 90, 2000))
    tall = torch.rand(3, 3000, 7)
    assert pad_to_aspect(tall, spec).shape == (3, 3000, 150) and torch.equal(pad_to_aspect(tall, spec)[..., :7], tall)
    fits = torch.rand(3, 100, 2000)
    assert pad_to_aspect(fits, spec) is fits


@pytest.fixture(scope="module")
def mobilenet_320():
    """A small COCO architecture (random weights, calibrated to give detections): the slivers'
    padding must suit torchvision's own models, not only ours."""
    return calibrated_architecture("fasterrcnn_mobilenet_v3_large_320_fpn")


@pytest.mark.parametrize("width, height", [(8000, 20), (20, 8000), (5000, 1), (1, 300), (3000, 2)])
@pytest.mark.parametrize("model", ["embedded", "mobilenet_320"])
@pytest.mark.parametrize("path", ["fast", "exact"])
def test_a_sliver_is_answered_with_its_boxes_inside_it(request, shapes_model, shapes_labels, default_settings,
                                                       exact_settings, width, height, model, path):
    """A panorama strip, a one-pixel line: answered 200 in the original's pixels, never refused."""
    net, labels = (shapes_model, shapes_labels) if model == "embedded" else \
        (request.getfixturevalue("mobilenet_320"), [f"class {i}" for i in range(91)])
    settings = {"fast": default_settings, "exact": exact_settings}[path]
    detector = Detector(net, labels, dataclasses.replace(settings, runtime="torch", default_threshold=0.0))
    rng = np.random.default_rng(width * height)
    strip = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    response = detector([Request({"body": synthetic.encode(strip, "PNG")})])[0]
    assert response.status == 200, response.body
    body = json.loads(response.body)
    assert (body["width"], body["height"]) == (width, height)
    for found in body["detections"]:
        x1, y1, x2, y2 = found["box"]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, found


def test_to_model_input_scales_to_unit_floats():
    pixels = torch.tensor([[[0, 255]], [[51, 102]], [[204, 153]]], dtype=torch.uint8)
    out = to_model_input(pixels, torch.device("cpu"))
    assert out.dtype == torch.float32 and torch.allclose(out, pixels.float() / 255)


def test_to_model_input_is_channel_planes_whatever_the_pixels_layout():
    """Decoded pixels are a channels-last view; the model's normalisation is slow on one."""
    pixels = torch.randint(0, 256, (48, 64, 3), dtype=torch.uint8).permute(2, 0, 1)  # as decode_image gives
    out = to_model_input(pixels, torch.device("cpu"))
    assert not pixels.is_contiguous() and out.is_contiguous() and torch.equal(out, pixels.float() / 255)


@pytest.mark.parametrize("model", ["embedded", "mobilenet_320"])
def test_a_model_sized_image_skips_the_models_resize_with_the_same_results_bit_for_bit(request, shapes_model, model):
    net = shapes_model if model == "embedded" else request.getfixturevalue("mobilenet_320")
    fast = skip_identity_resize(copy.deepcopy(net))
    width, height = ModelSpec.of(net).input_size(640, 480)
    at_size = synthetic_image(5, (width, height))
    assert fast.transform.resize(at_size)[0] is at_size
    for image in (at_size, synthetic_image(6, (640, 480)), synthetic_image(7, (90, 70))):  # shrunk, enlarged
        assert fast.transform.resize(image)[0].shape[-2:] == net.transform.resize(image)[0].shape[-2:]
        with torch.inference_mode():
            ours, theirs = fast([image])[0], net([image])[0]
        if image is at_size:
            assert len(theirs["boxes"]), "no detections to compare"
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(ours[key], theirs[key]), key


def test_a_photo_decoded_small_still_gets_boxes_in_its_own_pixels(shapes_model, shapes_labels, default_settings,
                                                                  exact_settings, shapes_openvino_ir):
    """A 2048-px JPEG: drafted to 1/2 and pre-resized by the fast path, whole on the exact path.
    Both must find the same shapes at the same original-pixel places. The fast path runs in fp32:
    what is checked is where its boxes land, not bf16's rounding (7 px here with AMX)."""
    sample = synthetic.generate(synthetic.SAMPLE_SEED)
    photo = sample.image.resize((sample.image.width * 2, sample.image.height * 2), Image.NEAREST)
    data = synthetic.encode(photo, "JPEG", quality=95)
    fast_fp32 = dataclasses.replace(default_settings, cpu_precision="fp32")
    detectors = [Detector(shapes_model, shapes_labels, settings, openvino_ir=shapes_openvino_ir)
                 for settings in (fast_fp32, exact_settings)]
    answers = [json.loads(d([Request({"body": data})])[0].body) for d in detectors]
    assert answers[0]["width"] == answers[1]["width"] == photo.width
    fast_found, exact_found = (sorted((d["label"], d["box"]) for d in a["detections"]) for a in answers)
    assert [label for label, _ in fast_found] == [label for label, _ in exact_found] == sorted(sample.labels)
    for (_, a), (_, b) in zip(fast_found, exact_found):
        assert max(abs(x - y) for x, y in zip(a, b)) < 6  # px, in a 1892-px-wide image
