"""Predict: one forward pass over a batch of images of any sizes.

torchvision's detectors take a *list* of images and batch them internally (resize, pad), so a
TorchServe batch of different-sized images is one call, unlike stacking them into one tensor.
"""

import torch
from torch import nn


def predict(model: nn.Module, images: list[torch.Tensor], fp16: bool = False) -> list[dict[str, torch.Tensor]]:
    """[{"boxes", "scores", "labels"}] per image, in each image's own pixel coordinates. `fp16`
    autocasts a CUDA forward pass to float16 (convolutions and matmuls; box arithmetic stays float32)."""
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
        return model(images)
