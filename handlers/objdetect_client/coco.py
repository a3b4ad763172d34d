"""COCO: detection results in COCO's format (image and category ids of a ground truth) and the
deployed model's mAP against that ground truth, both by pycocotools' rules."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import PurePosixPath
from typing import Iterable

from .result import Result


class GroundTruth:
    """A COCO instances file: which image id each source is, and which category each label."""

    def __init__(self, path: str):
        self.path = path
        self.data = json.loads(open(path).read())
        try:
            self._images = {PurePosixPath(image["file_name"]).parts: image["id"] for image in self.data["images"]}
            self.categories = {category["name"]: category["id"] for category in self.data["categories"]}
        except (KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a COCO instances file (no {error})") from None

    def file_names(self) -> list[str]:
        return [image["file_name"] for image in self.data["images"]]

    def image_id(self, source: str) -> int | None:
        """The image whose file_name is the longest tail of the source's path (folders, URLs, S3 keys)."""
        parts = PurePosixPath(source.replace("\\", "/")).parts
        for start in range(len(parts)):
            if parts[start:] in self._images:
                return self._images[parts[start:]]
        return None

    def detections(self, results: Iterable[Result]) -> list[dict]:
        """COCO detection results (bbox as x, y, width, height); labels the ground truth lacks are left out."""
        found = []
        for result in results:
            image_id = self.image_id(result.source)
            if image_id is None:
                continue
            for detection in result.detections:
                if detection.label in self.categories:
                    x1, y1, x2, y2 = detection.box
                    found.append({"image_id": image_id, "category_id": self.categories[detection.label],
                                  "bbox": [x1, y1, x2 - x1, y2 - y1], "score": detection.score})
        return found

    def evaluate(self, results: Iterable[Result]) -> dict[str, float]:
        """pycocotools' bbox evaluation over every image of the ground truth (an image without a
        result counts as one where nothing was found); its table goes to stderr."""
        require_pycocotools()
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        detections = self.detections(results)
        with contextlib.redirect_stdout(sys.stderr):  # pycocotools prints its progress and table
            truth = COCO(self.path)
            if not detections:
                return {"mAP": 0.0, "mAP_50": 0.0, "mAP_75": 0.0}
            evaluation = COCOeval(truth, truth.loadRes(detections), "bbox")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        stats = evaluation.stats
        return {"mAP": float(stats[0]), "mAP_50": float(stats[1]), "mAP_75": float(stats[2])}


def require_pycocotools() -> None:
    """Raises RuntimeError when pycocotools is missing: evaluate checks before it sends any image,
    not after sending them all."""
    try:
        import pycocotools.cocoeval  # noqa: F401
    except ImportError:
        raise RuntimeError("evaluate needs pycocotools: install the client with its coco extra "
                           "(pip install './handlers/objdetect_client[coco]' in a checkout)") from None
