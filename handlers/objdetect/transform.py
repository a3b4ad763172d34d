"""Transform: decoded uint8 pixels -> the float tensor a torchvision detector takes.

Normalisation and the final resize are the model's own (GeneralizedRCNNTransform), so on the
exact path served results equal `model(images)`. The fast path shrinks what the model would
shrink anyway while the pixels are still uint8 (antialiased, a quarter of the bytes of float),
so no full-resolution float copy of a phone photo is ever made; boxes map back to original
pixels through DecodedImage.scale.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torchvision.transforms.v2 import functional as F

from .decode import DecodedImage


def model_input_size(width: int, height: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The (width, height) torchvision's GeneralizedRCNNTransform resizes an image to."""
    scale = min(min_size / min(width, height), max_size / max(width, height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def fit_to_model(image: DecodedImage, min_size: int, max_size: int) -> DecodedImage:
    """`image` shrunk to the size the model would shrink it to; an image the model enlarges is kept."""
    height, width = image.pixels.shape[1:]
    target_width, target_height = model_input_size(width, height, min_size, max_size)
    if target_width >= width:
        return image
    pixels = F.resize(image.pixels, [target_height, target_width], antialias=True)
    return replace(image, pixels=pixels)


def to_model_input(pixels: torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(3, h, w) uint8 -> (3, h, w) `dtype` in [0, 1] on `device`; converted after the copy, so a GPU
    receives a quarter of the bytes (from pinned memory, so the copy runs asynchronously)."""
    if device.type == "cuda" and pixels.device.type == "cpu":
        pixels = pixels.pin_memory()
    return pixels.to(device, non_blocking=True).to(dtype).div_(255)
