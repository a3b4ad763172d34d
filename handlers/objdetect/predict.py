"""Predict: one forward pass over a batch of images of any sizes, on the device chosen here.

torchvision's detectors take a *list* of images and batch them internally (resize, pad), so a
TorchServe batch of different-sized images is one call, unlike stacking them into one tensor.
"""

from __future__ import annotations

import torch
from torch import nn


def predict(model: nn.Module, images: list[torch.Tensor], fp16: bool = False) -> list[dict[str, torch.Tensor]]:
    """[{"boxes", "scores", "labels"}] per image, in each image's own pixel coordinates. `fp16`
    autocasts a CUDA forward pass to float16 (convolutions and matmuls; box arithmetic stays float32)."""
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
        return model(images)


def choose_device(gpu_id: int | str | None, require_cuda: bool = False) -> torch.device:
    """The GPU TorchServe assigned this worker (`gpu_id`), else the CPU; with `require_cuda`, no
    GPU is an error, so the worker does not start (the setting's comment says why)."""
    if torch.cuda.is_available() and gpu_id is not None:
        device = torch.device(f"cuda:{gpu_id}")
        try:
            torch.ones(1, device=device).add_(1).item()  # a driver or device fault shows here, not mid-request
        except RuntimeError as error:
            raise RuntimeError(f"GPU {gpu_id} does not work: {error}") from error
        return device
    if require_cuda:
        raise RuntimeError(f"require_cuda is set but there is no usable GPU (torch.cuda.is_available() is "
                           f"{torch.cuda.is_available()}, TorchServe's gpu_id is {gpu_id}): refusing to serve from the CPU")
    return torch.device("cpu")


def gpu_readings(device: torch.device) -> dict[str, float]:
    """What this worker's GPU holds and how busy it is, for the request log; nothing on a CPU.
    Utilization comes from NVML (pynvml), which a machine may lack: then memory alone."""
    if device.type != "cuda":
        return {}
    readings = {"gpu_memory_mb": round(torch.cuda.memory_reserved(device) / 2**20, 1)}
    try:
        readings["gpu_utilization_percent"] = float(torch.cuda.utilization(device))
    except Exception:  # noqa: BLE001 - no NVML here: the reading is optional
        pass
    return readings
