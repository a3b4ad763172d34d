"""The models this service can serve, and where their weights come from.

Four torchvision Faster R-CNN variants with torchvision's published COCO weights, plus the
embedded shapes model whose weights ship in the repository. Any of the torchvision architectures
also takes a user's fine-tuned checkpoint and its labels file. Published weights are downloaded
once into torch's hub cache (where torchvision itself looks) by torch.hub, which checks the
SHA-256 prefix that torchvision puts in each file name; a cached file is checked again on use.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision.models import detection
from torchvision.models._api import WeightsEnum

from .shapes_net import build_shapes_detector
from .synthetic import SHAPE_CLASSES

EMBEDDED = "shapes"
BACKGROUND = "__background__"
# Written into each model archive: the architecture, labels, weights file and their source.
MODEL_INFO = "model.json"


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[..., nn.Module]  # build(num_classes=...) -> an untrained model
    labels: tuple[str, ...]  # class names of its default weights by class id, background first
    coco_weights: WeightsEnum | None = None  # torchvision's published COCO weights
    embedded_weights: str | None = None  # or weights of ours: a file under the model store


def _torchvision(builder: Callable[..., nn.Module], weights: WeightsEnum) -> Architecture:
    # weights=None and weights_backbone=None: the builder must not try to download anything.
    return Architecture(builder.__name__,
                        lambda num_classes, **kwargs: builder(weights=None, weights_backbone=None,
                                                              num_classes=num_classes, **kwargs),
                        tuple(weights.meta["categories"]), coco_weights=weights)


ARCHITECTURES = {
    arch.name: arch
    for arch in (
        _torchvision(detection.fasterrcnn_resnet50_fpn_v2, detection.FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1),
        _torchvision(detection.fasterrcnn_resnet50_fpn, detection.FasterRCNN_ResNet50_FPN_Weights.COCO_V1),
        _torchvision(detection.fasterrcnn_mobilenet_v3_large_fpn,
                     detection.FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1),
        _torchvision(detection.fasterrcnn_mobilenet_v3_large_320_fpn,
                     detection.FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1),
        Architecture(EMBEDDED, build_shapes_detector, (BACKGROUND, *SHAPE_CLASSES),
                     embedded_weights="embedded/shapes_detector.pt"),
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


def published_weights(arch: Architecture, download: bool = True) -> Path:
    """The verified published weights file: from the cache, else downloaded into it (torch.hub
    writes beside the target and renames only a download whose hash matches)."""
    if arch.coco_weights is None:
        raise ValueError(f"{arch.name} has no published weights")
    path = cached_weights_path(arch)
    expected = path.stem.rsplit("-", 1)[-1]  # torchvision names files <name>-<SHA-256 prefix>.pth
    if not path.exists():
        if not download:
            raise FileNotFoundError(f"{path} is not cached")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(arch.coco_weights.url, str(path), hash_prefix=expected, progress=False)
    with open(path, "rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    if not digest.startswith(expected):
        raise ValueError(f"{path} has SHA-256 {digest}, expected one starting {expected}")
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


def load_archived_model(model_dir: Path) -> tuple[nn.Module, list[str]]:
    """The model an unpacked archive describes (its MODEL_INFO), and its labels."""
    info = json.loads((Path(model_dir) / MODEL_INFO).read_text())
    state_dict = load_state_dict(Path(model_dir) / info["weights"])
    return build_model(info["architecture"], info["labels"], state_dict), info["labels"]
