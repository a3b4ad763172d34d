"""What the request path needs to know about a torchvision detector, read from it in one place.

A torchvision GeneralizedRCNN resizes every image itself (GeneralizedRCNNTransform: the shorter
side to `min_size` unless the longer would then pass `max_size`), normalises it by `image_mean`,
and keeps at most `detections_per_img` detections. Decoding, pre-resizing, warm-up and the options' limits all
depend on those numbers; this module is the only one that reads torchvision's internals for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    min_size: int
    max_size: int
    max_detections: int
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # torchvision's (ImageNet's)

    @classmethod
    def of(cls, model: nn.Module) -> "ModelSpec":
        # In eval mode the transform resizes to the last of its min_size choices.
        return cls(model.transform.min_size[-1], model.transform.max_size, model.roi_heads.detections_per_img,
                   tuple(model.transform.image_mean))

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) the model resizes a width x height image to."""
        return resized_size(width, height, self.min_size, self.max_size)


def resized_size(width: int, height: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The (width, height) GeneralizedRCNNTransform resizes a width x height image to (its arithmetic)."""
    scale = min(min_size / min(width, height), max_size / max(width, height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
