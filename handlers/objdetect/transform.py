"""Transform: decoded uint8 pixels -> the float tensor a torchvision detector takes.

Normalisation and resizing are the model's own (GeneralizedRCNNTransform), so served results
match `model(images)` exactly; this step only moves the pixels and scales them to [0, 1].
"""

import torch


def to_model_input(pixels: torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(3, h, w) uint8 -> (3, h, w) `dtype` in [0, 1] on `device`; converted after the copy, so a GPU
    receives a quarter of the bytes."""
    return pixels.to(device, non_blocking=True).to(dtype).div_(255)
