"""Batch norms folded into the convolutions before them: the same detector, one pass less per layer.

In eval mode a BatchNorm2d is a fixed per-channel scale and shift, so `bn(conv(x))` is one
convolution with rescaled weights and a bias (torch.nn.utils.fusion). Our detectors are built
untrained and then loaded, so every backbone, FPN and head norm is a BatchNorm2d: 46 of them in
mobilenet_v3, 10 in the embedded model. Results move only by float rounding.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, Bottleneck

# Modules whose forward applies a child BatchNorm right after the Conv2d registered before it:
# containers that run their children in order, and ResNet's blocks (conv1 -> bn1, ...).
_IN_ORDER = (nn.Sequential, IntermediateLayerGetter, BasicBlock, Bottleneck)


def fold_batch_norms(model: nn.Module) -> tuple[nn.Module, int]:
    """An eval-mode copy of `model` with each conv -> BatchNorm2d pair folded into one conv (the
    caller's model is left as it was), and how many were folded."""
    model = copy.deepcopy(model).eval()
    folded = 0
    for parent in model.modules():
        if not isinstance(parent, _IN_ORDER):
            continue
        children = list(parent.named_children())
        for (conv_name, conv), (norm_name, norm) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and type(norm) is nn.BatchNorm2d:
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, norm))
                setattr(parent, norm_name, nn.Identity())
                folded += 1
    return model, folded
