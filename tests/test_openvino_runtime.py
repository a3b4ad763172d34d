"""runtime=openvino: the dense parts in OpenVINO, equal to torchvision's own forward pass in fp32 at
every size (no size is baked into the converted parts), and the choice of runtime and precision."""

import json

import numpy as np
import pytest
import torch

from objdetect import openvino_runtime, synthetic
from objdetect.pipeline import Detector, Request
from objdetect_tools.equivalence import calibrated_architecture, synthetic_image, unmatched

pytestmark = pytest.mark.unit

# Sizes after which nothing about the image repeats: 64 px to 4032 px, portrait, landscape, square,
# odd sides, and aspect ratios up to 12:1 (the model's transform resizes each differently).
SIZES = [(64, 64), (4032, 3024), (3024, 4032), (640, 480), (480, 640), (1000, 1000), (1280, 720),
         (720, 1280), (333, 777), (1500, 125), (125, 1500), (901, 900)]


def images(count: int) -> list[torch.Tensor]:
    """`count` generated images, at SIZES and then at seeded random sizes of the same range."""
    rng = np.random.default_rng(7)
    sizes = SIZES + [tuple(int(v) for v in rng.integers(64, 4033, 2)) for _ in range(count - len(SIZES))]
    return [synthetic_image(2_000_000_000 + i, size) for i, size in enumerate(sizes)]


@pytest.fixture(scope="module")
def mobilenet():
    return calibrated_architecture("fasterrcnn_mobilenet_v3_large_320_fpn")


@pytest.fixture(scope="module")
def hundred_images():
    return images(100)


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["shapes", "mobilenet"])
def test_fp32_equals_torchvisions_forward_pass_at_every_size(model_name, shapes_model, mobilenet, hundred_images):
    model = shapes_model if model_name == "shapes" else mobilenet
    parts = openvino_runtime.convert(model, torch.rand(3, 480, 640))  # one size converts for all
    fast = openvino_runtime.accelerate(model, *parts, "fp32", threads=2)
    found, problems = 0, {}
    with torch.inference_mode():
        for image in hundred_images:
            got, expected = fast([image])[0], model([image])[0]
            found += len(expected["scores"])
            if missing := unmatched(got, expected, model):
                problems[tuple(image.shape[1:])] = missing[:3]
    assert not problems, problems
    assert found >= 100  # most images have detections to compare


def test_a_batch_of_several_sizes_equals_torchvisions_forward_pass(shapes_model):
    # The gathered RoIAlign pools each image's boxes from its own features: a batch is answered as its images are.
    batch = images(len(SIZES))[:5]
    fast = openvino_runtime.accelerate(shapes_model, *openvino_runtime.convert(shapes_model, torch.rand(3, 480, 640)),
                                       "fp32", threads=3)
    with torch.inference_mode():
        fast([batch[0]])  # the first call sets RoIAlign's scales with torchvision's pool; later ones gather
        got, expected = fast(batch), shapes_model(batch)
    assert [unmatched(g, e, shapes_model) for g, e in zip(got, expected)] == [[]] * len(batch)
    assert sum(len(e["scores"]) for e in expected) >= 10


def test_the_parts_saved_in_an_archive_serve_as_the_converted_ones(shapes_model, shapes_labels, default_settings,
                                                                   shapes_openvino_ir, monkeypatch):
    converted = Detector(shapes_model, shapes_labels, default_settings)

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the archive carries the parts")

    monkeypatch.setattr(openvino_runtime, "convert", no_conversion)
    loaded = Detector(shapes_model, shapes_labels, default_settings, openvino_ir=shapes_openvino_ir)
    _, runtime = openvino_runtime.choose(default_settings.runtime, default_settings.cpu_precision, torch.device("cpu"))
    assert loaded.runtime == converted.runtime == runtime and runtime.startswith("openvino")
    request = Request({"body": synthetic.encode(synthetic.generate(synthetic.SAMPLE_SEED).image)})
    answers = [json.loads(detector([request])[0].body)["detections"] for detector in (loaded, converted)]
    assert answers[0] == answers[1] and len(answers[0]) == 6


@pytest.mark.parametrize("runtime, precision, device, bf16, installed, expected", [
    ("openvino", "bf16", "cpu", True, True, ("bf16", "openvino bf16")),
    ("openvino", "fp32", "cpu", True, True, ("fp32", "openvino fp32")),
    ("openvino", "bf16", "cpu", False, True, ("fp32", "openvino fp32 (bf16 asked for, but this CPU has no")),
    ("openvino", "bf16", "cpu", True, False, (None, "torch (runtime=openvino, but OpenVINO is not installed")),
    ("openvino", "bf16", "cuda", True, True, (None, "torch (OpenVINO serves CPU workers")),
    ("torch", "bf16", "cpu", True, True, (None, "torch (runtime=torch)")),
])
def test_the_runtime_falls_back_and_says_why(monkeypatch, runtime, precision, device, bf16, installed, expected):
    monkeypatch.setattr(openvino_runtime, "bf16_supported", lambda: bf16)
    monkeypatch.setattr(openvino_runtime, "available", lambda: installed)
    chosen, why = openvino_runtime.choose(runtime, precision, torch.device(device))
    assert chosen == expected[0] and why.startswith(expected[1])


def test_this_cpu_reports_bf16_as_proc_cpuinfo_does():
    flags = open("/proc/cpuinfo").read().split()
    assert openvino_runtime.bf16_supported() == ("avx512_bf16" in flags or "amx_bf16" in flags)
