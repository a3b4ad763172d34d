"""Batch-norm folding: every norm gone, the caller's model untouched, the detections the same."""

import pytest
import torch
from torch import nn

from objdetect.fold import fold_batch_norms
from objdetect.registry import architecture

pytestmark = pytest.mark.unit


def _with_trained_looking_norms(model: nn.Module) -> nn.Module:
    """Fresh norms are identities (mean 0, var 1, weight 1, bias 0), which any fold gets right:
    give them the spread a trained model's have."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            shape = norm.running_mean.shape
            norm.running_mean.copy_(torch.randn(shape, generator=generator) * 0.1)
            norm.running_var.copy_(torch.rand(shape, generator=generator) * 0.4 + 0.8)
            norm.weight.copy_(torch.rand(shape, generator=generator) * 0.4 + 0.6)
            norm.bias.copy_(torch.randn(shape, generator=generator) * 0.1)
    return model.eval()


@pytest.mark.parametrize("arch, expected_folds", [
    ("fasterrcnn_mobilenet_v3_large_320_fpn", 46),
    ("fasterrcnn_resnet50_fpn", 53),  # ResNet blocks: conv1 -> bn1 ... and the downsample paths
    ("fasterrcnn_resnet50_fpn_v2", 65),  # and v2's normed FPN, RPN and box head
    ("shapes", 10),
])
def test_folding_removes_every_norm_and_keeps_the_detections(arch, expected_folds):
    torch.manual_seed(0)
    model = _with_trained_looking_norms(architecture(arch).build(num_classes=4, min_size=320, max_size=320))
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1] += 5  # random weights: make it detect
    norms_before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())

    folded, count = fold_batch_norms(model)

    assert count == norms_before == expected_folds
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == norms_before  # untouched
    image = torch.rand(3, 240, 320, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected, got = model([image])[0], folded([image])[0]
    assert len(expected["boxes"]) > 0 and torch.equal(expected["labels"], got["labels"])
    assert torch.allclose(expected["boxes"], got["boxes"], atol=0.05)
    assert torch.allclose(expected["scores"], got["scores"], atol=1e-4)
