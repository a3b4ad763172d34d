"""The model's input size and detection cap, read from torchvision's detectors in one place."""

import pytest
import torch

from objdetect.model_spec import ModelSpec
from objdetect.registry import architecture

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("width, height", [(4032, 3024), (640, 480), (300, 2000), (100, 80), (1333, 800)])
@pytest.mark.parametrize("arch", ["fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_resnet50_fpn_v2", "shapes"])
def test_input_size_is_the_size_torchvision_resizes_to(arch, width, height):
    model = architecture(arch).build(num_classes=2).eval()
    batch, _ = model.transform([torch.zeros(3, height, width)])
    assert ModelSpec.of(model).input_size(width, height) == tuple(reversed(batch.image_sizes[0]))


def test_the_detection_cap_is_the_models():
    model = architecture("shapes").build(num_classes=4, box_detections_per_img=17)
    assert ModelSpec.of(model).max_detections == 17
