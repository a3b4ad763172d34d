"""Transform: a decoded image -> the float tensor a torchvision detector takes.

Normalisation and the final resize are the model's own (GeneralizedRCNNTransform), so on the
exact path served results equal `model(images)`. The fast path shrinks what the model would
shrink anyway while the pixels are still uint8 (antialiased, a quarter of the bytes of float),
so no full-resolution float copy of a phone photo is ever made; boxes map back to original
pixels through DecodedImage.scale.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torchvision.transforms.v2 import functional as F

from .decode import DecodedImage
from .errors import RequestError
from .model_spec import ModelSpec

# The detectors resize the shorter side up and the longer side down; a sliver of an image would
# resize to zero pixels and fail the whole batch, so such shapes are refused up front.
MAX_ASPECT_RATIO = 20


def check_shape(image: DecodedImage) -> None:
    """Refuses an image whose sides differ by more than MAX_ASPECT_RATIO."""
    if max(image.width, image.height) > MAX_ASPECT_RATIO * min(image.width, image.height):
        raise RequestError("bad_image_shape", f"the image is {image.width}x{image.height}; "
                           f"sides may differ by at most {MAX_ASPECT_RATIO}x")


def shrink_to_model(image: DecodedImage, spec: ModelSpec) -> DecodedImage:
    """`image` shrunk to the size the model would shrink it to; an image the model enlarges is kept."""
    height, width = image.pixels.shape[1:]
    target_width, target_height = spec.input_size(width, height)
    if target_width >= width:
        return image
    return replace(image, pixels=F.resize(image.pixels, [target_height, target_width], antialias=True))


def to_model_input(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(3, h, w) uint8 -> (3, h, w) float32 in [0, 1] on `device`; converted after the copy, so a GPU
    receives a quarter of the bytes (from pinned memory, so the copy runs asynchronously)."""
    if device.type == "cuda" and pixels.device.type == "cpu":
        pixels = pixels.pin_memory()
    return pixels.to(device, non_blocking=True).float().div_(255)
