"""Detections: the one result type that postprocessing filters, rendering draws and the response serializes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import boxes as box_ops


@dataclass(frozen=True)
class Detections:
    """N detections as columns, sorted by score (highest first)."""

    boxes: torch.Tensor  # (N, 4) float, x1 y1 x2 y2 in pixels
    scores: torch.Tensor  # (N,) float
    class_ids: torch.Tensor  # (N,) int64, indices into the model's label list
    labels: tuple[str, ...]  # (N,) names of class_ids

    @classmethod
    def from_model_output(cls, output: dict[str, torch.Tensor], class_names: list[str]) -> "Detections":
        """torchvision's {"boxes", "scores", "labels"} for one image, moved to the CPU."""
        order = torch.argsort(output["scores"], descending=True, stable=True)
        class_ids = output["labels"][order].cpu()
        return cls(
            boxes=output["boxes"][order].float().cpu(),
            scores=output["scores"][order].float().cpu(),
            class_ids=class_ids,
            labels=tuple(class_names[i] for i in class_ids.tolist()),
        )

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, keep: torch.Tensor) -> "Detections":
        """The detections at the boolean mask or index tensor `keep`, order preserved."""
        indices = keep.nonzero().flatten() if keep.dtype == torch.bool else keep
        return Detections(self.boxes[indices], self.scores[indices], self.class_ids[indices],
                          tuple(self.labels[i] for i in indices.tolist()))

    def first(self, count: int) -> "Detections":
        return self.select(torch.arange(min(count, len(self))))

    def scaled(self, sx: float, sy: float) -> "Detections":
        """Boxes multiplied by (sx, sy): maps them between a resized image and the original."""
        factors = torch.tensor([sx, sy, sx, sy], dtype=self.boxes.dtype)
        return Detections(self.boxes * factors, self.scores, self.class_ids, self.labels)

    def clipped(self, width: int, height: int) -> "Detections":
        """Boxes clipped to a width x height image; those left without area are dropped."""
        boxes = box_ops.clip_boxes_to_image(self.boxes, (height, width))
        inside = Detections(boxes, self.scores, self.class_ids, self.labels)
        return inside.select(box_ops.box_area(boxes) > 0)

    def to_json(self) -> list[dict]:
        """Rounded to what a client can use: scores to 1e-4, boxes to 1/100 px."""
        return [
            {"label": label, "class_id": class_id, "score": round(score, 4), "box": [round(v, 2) for v in box]}
            for label, class_id, score, box in zip(
                self.labels, self.class_ids.tolist(), self.scores.tolist(), self.boxes.tolist()
            )
        ]
