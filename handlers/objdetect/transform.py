"""Transform: a decoded image -> the float tensor a torchvision detector takes.

Normalisation and the final resize are the model's own (GeneralizedRCNNTransform), so on the
exact path served results equal `model(images)`. The fast path shrinks what the model would
shrink anyway while the pixels are still uint8 (antialiased, a quarter of the bytes of float),
so no full-resolution float copy of a phone photo is ever made; boxes map back to original
pixels through DecodedImage.scale. An image too long and thin for the model is padded, not refused.
An image that arrives at the size the model resizes to is not interpolated again (skip_identity_resize).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.transforms.v2 import functional as F

from .decode import DecodedImage
from .model_spec import ModelSpec, resized_size

# The detectors resize the shorter side up and the longer side down: past this ratio the shorter
# would shrink to a few pixels, too few for the feature maps (and zero would fail the whole batch).
MAX_ASPECT_RATIO = 20


def is_sliver(image: DecodedImage) -> bool:
    """Whether the image's sides differ by more than MAX_ASPECT_RATIO (it is padded to serve it)."""
    return max(image.width, image.height) > MAX_ASPECT_RATIO * min(image.width, image.height)


def pad_to_aspect(model_input: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """(3, h, w) float, padded on the right or at the bottom until its sides differ by at most
    MAX_ASPECT_RATIO; unchanged when they do. The fill is the model's mean colour, which it
    normalises to zero, as torchvision pads its own batches. Boxes need no change (the origin
    stays); postprocessing clips them to the image."""
    height, width = model_input.shape[1:]
    shorter = math.ceil(max(height, width) / MAX_ASPECT_RATIO)
    pad_right, pad_bottom = max(0, shorter - width), max(0, shorter - height)
    if not pad_right and not pad_bottom:
        return model_input
    return F.pad(model_input, [0, 0, pad_right, pad_bottom], fill=list(spec.image_mean))


def shrink_to_model(image: DecodedImage, spec: ModelSpec) -> DecodedImage:
    """`image` shrunk to the size the model would shrink it to; an image the model enlarges is kept."""
    height, width = image.pixels.shape[1:]
    target_width, target_height = spec.input_size(width, height)
    if target_width >= width and target_height >= height:
        return image
    # Either side may stay (a 1-pixel-wide sliver stays 1 wide while its 65,500 rows shrink to the model's).
    size = [min(target_height, height), min(target_width, width)]
    return replace(image, pixels=F.resize(image.pixels, size, antialias=True))


def to_model_input(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(3, h, w) uint8 -> (3, h, w) float32 in [0, 1] on `device`; converted after the copy, so a GPU
    receives a quarter of the bytes (from pinned memory, so the copy runs asynchronously)."""
    # Contiguous (channel planes): decoded pixels are a channels-last view, on which the model's own
    # normalisation and resize run several times slower (about 1 ms more at 512x384 on a CPU).
    # Laid out while uint8: a quarter of the bytes to move.
    pixels = pixels.contiguous()
    if device.type == "cuda" and pixels.device.type == "cpu":
        pixels = pixels.pin_memory()
    return pixels.to(device, non_blocking=True).float().div_(255)


class _KeepingModelSizedImages(GeneralizedRCNNTransform):
    """torchvision's transform, except that an image already at the size it resizes to goes on as it
    is: torchvision interpolates it to that same size anyway, bilinear at scale 1, which returns the
    same pixels (1-3 ms of a CPU's time at 640x480). Pre-resized images are all at that size."""

    def resize(self, image: torch.Tensor, target=None):
        height, width = image.shape[-2:]
        at_size = resized_size(width, height, self.min_size[-1], self.max_size) == (width, height)
        if at_size and target is None and not self.training and self.fixed_size is None:
            return image, target
        return super().resize(image, target)


def skip_identity_resize(model: nn.Module) -> nn.Module:
    """`model`, in place, with its transform passing model-sized images on unresized: the same
    results, bit for bit (tests/test_transform.py)."""
    if type(model.transform) is GeneralizedRCNNTransform:
        model.transform.__class__ = _KeepingModelSizedImages  # it adds no state: one method differs
    return model
