"""The embedded model: torchvision's FasterRCNN on a small backbone, for circles, squares, triangles.

It exists so the project detects real objects with no downloadable weights: a ~0.5 M-parameter
network trained by scripts/train_embedded.py on objdetect.synthetic images in under 20 minutes
on two CPU cores. Only the backbone and head sizes are ours; detection itself is torchvision's.
"""

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

FPN_CHANNELS = 32
# Longest side the model sees: a 16 px shape in a 1024 px image becomes 8 px, which the stride-4
# level with 12 px anchors can still find, at a quarter of full-resolution cost. (640 px, tried,
# cost more steps in the 20-minute budget than it gained.)
IMAGE_SIDE = 512


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ShapesBackbone(nn.Module):
    """Five stride-2 stages; the last four feed a light FPN (strides 4, 8, 16, 32, and 64 by pooling)."""

    def __init__(self, widths=(16, 32, 48, 64, 96), fpn_channels: int = FPN_CHANNELS):
        super().__init__()
        stages, cin = [], 3
        for width in widths:
            stages.append(nn.Sequential(_conv(cin, width, stride=2), _conv(width, width)))
            cin = width
        self.stages = nn.ModuleList(stages)
        self.fpn = FeaturePyramidNetwork(list(widths[1:]), fpn_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = fpn_channels  # FasterRCNN reads this

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        features = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i > 0:
                features[str(i - 1)] = x
        return self.fpn(features)


def build_shapes_detector(num_classes: int = 4, **kwargs) -> FasterRCNN:
    """num_classes counts the background, as torchvision's detection models do."""
    anchors = AnchorGenerator(
        sizes=((12, 20), (32, 48), (64, 96), (128, 192), (256, 384)),
        aspect_ratios=((0.7, 1.0, 1.4),) * 5,
    )
    box_head = TwoMLPHead(FPN_CHANNELS * 7 * 7, 128)
    options = dict(
        min_size=IMAGE_SIDE,
        max_size=IMAGE_SIDE,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(128, num_classes),
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=300,
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        box_batch_size_per_image=256,
    )
    options.update(kwargs)
    return FasterRCNN(ShapesBackbone(), **options)
