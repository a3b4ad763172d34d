"""Whether two runs of a detector found the same things: the comparison the OpenVINO tests and the
GPU check (objdetect_tools.gpu_check) make, and the seeded random model they make it on."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from objdetect import registry, synthetic


def synthetic_image(seed: int, size: tuple[int, int]) -> torch.Tensor:
    """A generated image resized to `size` (width, height), as (3, h, w) floats in [0, 1]."""
    pixels = np.array(synthetic.generate(seed).image.resize(size, Image.BILINEAR))
    return torch.from_numpy(pixels).permute(2, 0, 1).float().div(255)


def unmatched(got: dict, expected: dict, model: torch.nn.Module, box_px: float = 0.5, score: float = 1e-3) -> list[str]:
    """What of `expected` has no counterpart in `got`, and what of `got` none in `expected`: the same
    label, score and box within the tolerances, one to one (where scores tie, the order may differ).
    Detections at the edge of being kept (the score threshold, or the last of a full list) may be
    kept by one and not the other, and a cut between compared and not compared can split a pair of
    equal scores: so each side's detections more than `score` above the edge are looked for among
    all of the other side's above the edge."""
    cap, threshold = model.roi_heads.detections_per_img, model.roi_heads.score_thresh
    edge = max(threshold, expected["scores"][-1].item() if len(expected["scores"]) == cap else threshold)

    def above(detections: dict, cut: float) -> dict:
        return {k: v[detections["scores"] > cut] for k, v in detections.items()}

    missing = _without_counterpart(above(expected, edge + score), above(got, edge), box_px, score)
    extra = _without_counterpart(above(got, edge + score), above(expected, edge), box_px, score)
    return missing + [f"unexpected {detection}" for detection in extra]


def _without_counterpart(wanted: dict, pool: dict, box_px: float, score: float) -> list[str]:
    box_gap = (pool["boxes"][None, :, :] - wanted["boxes"][:, None, :]).abs().amax(-1)  # wanted x pool
    close = ((pool["labels"][None, :] == wanted["labels"][:, None]) & (box_gap <= box_px)
             & ((pool["scores"][None, :] - wanted["scores"][:, None]).abs() <= score))
    free, missing = torch.ones(len(pool["scores"]), dtype=torch.bool), []
    for i in range(len(wanted["scores"])):
        candidates = (close[i] & free).nonzero().flatten()
        if len(candidates):
            free[candidates[box_gap[i, candidates].argmin()]] = False
        else:
            box = [round(v, 1) for v in wanted["boxes"][i].tolist()]
            missing.append(f"{wanted['labels'][i].item()} {wanted['scores'][i].item():.4f} {box}")
    return missing


def with_calibrated_norms(model: torch.nn.Module, calibration: list[torch.Tensor]) -> torch.nn.Module:
    """Seeded random weights with fresh batch norms shrink a backbone's activations to ~1e-8, so
    every proposal scores alike and which of two tied ones survives is float noise. Set each norm's
    statistics from calibration images instead, as training would: features then vary as a
    trained model's do, scores differ, and an equality test compares the computation."""
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the calibration images
    model.backbone.train()
    with torch.no_grad():
        for image in calibration:
            model.backbone(model.transform([image])[0].tensors)
    return model.eval()


def calibrated_architecture(name: str, seed: int = 0) -> torch.nn.Module:
    """A registry architecture with seeded random weights and calibrated norms (no published
    weights can be downloaded here, nor on the GPU machine): a model that detects, comparably."""
    torch.manual_seed(seed)
    arch = registry.architecture(name)
    calibration = [synthetic_image(3_000_000_000 + i, (640, 480)) for i in range(8)]
    return with_calibrated_norms(arch.build(num_classes=len(arch.labels)), calibration)
