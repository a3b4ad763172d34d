"""Postprocess: the model's output for one image -> the Detections the client asked for."""

import torch

from .decode import DecodedImage
from .detections import Detections
from .inputs import Options


def postprocess(output: dict[str, torch.Tensor], class_names: list[str], image: DecodedImage,
                options: Options) -> Detections:
    """Threshold, class filter and cap, then boxes mapped back to the upright original's pixels
    and clipped to it (a padded image's boxes may reach into the padding)."""
    detections = Detections.from_model_output(output, class_names)
    keep = detections.scores >= options.threshold
    if options.classes is not None:
        keep &= torch.tensor([label in options.classes for label in detections.labels], dtype=torch.bool)
    return detections.select(keep).first(options.max_detections).scaled(*image.scale).clipped(image.width, image.height)
