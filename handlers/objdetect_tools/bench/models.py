"""The models measured: one weights file per model, loaded by all three variants alike."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from objdetect import openvino_runtime, registry
from objdetect.settings import Settings
from objdetect_serving.archive import default_weights
from objdetect_serving.paths import ROOT

RANDOM_WEIGHTS_SEED = 0
# Random weights score every proposal alike, so a raised "person" logit decides all or nothing:
# +4 (the tests, which ask for threshold 0) scores 0.37, under the stock handler's fixed 0.5;
# +5 scores 0.61, so every answer carries torchvision's cap of 100 detections (the worst case
# for response building, for stock and ours alike) and the stock format check sees real boxes.
BOOSTED_CLASS, BOOST = 1, 5.0


@dataclass
class BenchModel:
    name: str  # a registry architecture
    labels: list[str]
    weights: Path  # a float32 state_dict that all the variants load
    weights_note: str  # where the weights came from, for the report
    module: torch.nn.Module  # for `direct`, in eval mode
    openvino: torch.nn.Module | None  # for `openvino_direct`: the module with OpenVINO parts, as ours runs it
    openvino_runtime: str  # what openvino_direct runs (or why it does not), for the report


def write_weights(name: str, workdir: Path) -> tuple[Path, str]:
    """workdir/<name>-weights.pth, and where they came from: the embedded model's committed weights;
    for a torchvision architecture, seeded random weights (no COCO weights can be downloaded here,
    and timing does not depend on them)."""
    arch = registry.architecture(name)
    weights = workdir / f"{name}-weights.pth"
    if arch.embedded_weights:
        committed, _ = default_weights(arch, download=False)
        state_dict = registry.load_state_dict(committed)  # as float32
        note = f"embedded weights ({committed.relative_to(ROOT)})"
    else:
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model = arch.build(num_classes=len(arch.labels)).eval()
        with torch.no_grad():
            model.roi_heads.box_predictor.cls_score.bias[BOOSTED_CLASS] += BOOST
        state_dict = model.state_dict()
        note = (f"random weights (torch.manual_seed({RANDOM_WEIGHTS_SEED}); class {arch.labels[BOOSTED_CLASS]!r} "
                f"logit +{BOOST:g}): no COCO weights can be downloaded here, and timing does not depend on them")
    torch.save(state_dict, weights)
    return weights, note


def default_cpu_runtime() -> tuple[Settings, str | None, str]:
    """Our handler's default settings, and what a CPU worker runs with them here: OpenVINO's
    precision (None for eager torch) and that, in words."""
    defaults = Settings.load({}, {})
    return defaults, *openvino_runtime.choose(defaults.runtime, defaults.cpu_precision, torch.device("cpu"))


def prepare_model(name: str, workdir: Path) -> BenchModel:
    """The model with the weights `write_weights` gives it, as every variant runs it."""
    labels = list(registry.architecture(name).labels)
    weights, note = write_weights(name, workdir)
    module = registry.build_model(name, labels, registry.load_state_dict(weights))
    defaults, precision, runtime = default_cpu_runtime()  # as a worker with every core resolves them
    accelerated = openvino_runtime.accelerate(module, *openvino_runtime.convert(module, torch.full((3, 480, 640), 0.5)),
                                              precision, len(os.sched_getaffinity(0)),
                                              defaults.gather_roialign) if precision else None
    return BenchModel(name, labels, weights, note, module, accelerated, runtime)
