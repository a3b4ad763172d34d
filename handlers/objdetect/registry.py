"""The models this service can serve, and where their weights come from.

Four torchvision Faster R-CNN variants with torchvision's published COCO weights, plus the
embedded shapes model that ships in the repository. Any of the torchvision architectures also
takes a user's fine-tuned checkpoint and its labels file. Published weights are downloaded once
into torch's hub cache (where torchvision itself looks) and verified: torchvision names each file
after the first hex digits of its SHA-256, the same check torch.hub performs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests
import torch
from torch import nn
from torchvision.models import detection
from torchvision.models._api import WeightsEnum

from .shapes_net import build_shapes_detector
from .synthetic import SHAPE_CLASSES

EMBEDDED = "shapes"  # its weights are a file in the repository: model_store/embedded/
BACKGROUND = "__background__"


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[..., nn.Module]  # build(num_classes=...) -> an untrained model
    coco_weights: WeightsEnum | None  # torchvision's published COCO weights, if any
    summary: str

    def labels(self) -> list[str]:
        """Class names by class id, background first, for the published (or embedded) weights."""
        if self.coco_weights is not None:
            return list(self.coco_weights.meta["categories"])
        return [BACKGROUND, *SHAPE_CLASSES]


def _torchvision(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    # weights=None and weights_backbone=None: the builder must not try to download anything.
    return lambda num_classes, **kwargs: builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)


ARCHITECTURES = {
    arch.name: arch
    for arch in (
        Architecture("fasterrcnn_resnet50_fpn_v2", _torchvision(detection.fasterrcnn_resnet50_fpn_v2),
                     detection.FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
                     "COCO box mAP 46.7, 280 GFLOPs: the production default on GPU"),
        Architecture("fasterrcnn_resnet50_fpn", _torchvision(detection.fasterrcnn_resnet50_fpn),
                     detection.FasterRCNN_ResNet50_FPN_Weights.COCO_V1,
                     "COCO box mAP 37.0, 134 GFLOPs: the original pipeline's model"),
        Architecture("fasterrcnn_mobilenet_v3_large_fpn", _torchvision(detection.fasterrcnn_mobilenet_v3_large_fpn),
                     detection.FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1,
                     "COCO box mAP 32.8, 4.5 GFLOPs: the default on CPU"),
        Architecture("fasterrcnn_mobilenet_v3_large_320_fpn",
                     _torchvision(detection.fasterrcnn_mobilenet_v3_large_320_fpn),
                     detection.FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1,
                     "COCO box mAP 22.8, 0.7 GFLOPs: fastest, low resolution"),
        Architecture(EMBEDDED, build_shapes_detector, None,
                     "embedded: circle/square/triangle, trained by scripts/train_embedded.py"),
    )
}


def architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(ARCHITECTURES)}") from None


def cached_weights_path(arch: Architecture) -> Path:
    """Where torch.hub (and so torchvision) keeps this architecture's published weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(arch.coco_weights.url)


def verify(path: Path, expected_prefix: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(expected_prefix):
        raise ValueError(f"{path} has SHA-256 {digest.hexdigest()}, expected one starting {expected_prefix}")


def published_weights(arch: Architecture, download: bool = True, timeout_s: float = 10.0) -> Path:
    """The verified published weights file: from the cache, else downloaded into it."""
    if arch.coco_weights is None:
        raise ValueError(f"{arch.name} has no published weights")
    path = cached_weights_path(arch)
    expected = path.stem.rsplit("-", 1)[-1]  # torchvision names files <name>-<SHA-256 prefix>.pth
    if path.exists():
        verify(path, expected)
        return path
    if not download:
        raise FileNotFoundError(f"{path} is not cached")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed once verified: a broken download never looks cached.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as part:
        staged = Path(part.name)
    try:
        with requests.get(arch.coco_weights.url, stream=True, timeout=timeout_s) as response:
            response.raise_for_status()
            with open(staged, "wb") as file:
                for block in response.iter_content(1 << 20):
                    file.write(block)
        verify(staged, expected)
        staged.replace(path)
    finally:
        staged.unlink(missing_ok=True)
    return path


def read_labels(path: Path) -> list[str]:
    """A labels file: one class name per line, class 1 first; the background is added."""
    names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path} lists no labels")
    if len(set(names)) != len(names):
        raise ValueError(f"{path} repeats a label")
    return names if names[0] == BACKGROUND else [BACKGROUND, *names]


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's weights as float32: a bare state_dict, or torchvision references' {"model": ...}.
    weights_only: a checkpoint is data, never code to run."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds no state_dict")
    return {k.removeprefix("module."): v.float() if v.is_floating_point() else v for k, v in checkpoint.items()}


def build_model(arch_name: str, labels: list[str], state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """The architecture sized for `labels`, with the weights loaded strictly (a mismatch is an error)."""
    model = architecture(arch_name).build(num_classes=len(labels))
    model.load_state_dict(state_dict)
    return model.eval()
