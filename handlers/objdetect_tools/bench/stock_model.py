"""The stock archive's --model-file: the model as a user of TorchServe's object_detector packs it.

That handler imports this file, takes the one class defined in it, builds it with no arguments
and calls its load_state_dict(torch.load(--serialized-file)). What to build is read from
stock_model.json, packed beside this file (TorchServe unpacks an archive's files into one
folder): {"architecture": "shapes" or a torchvision builder's name, "num_classes": n}. The
embedded shapes detector comes from shapes_net.py, packed beside it too. Nothing here imports
the objdetect package: a user of the stock handler would not have it.
"""

import json
from pathlib import Path

from torch import nn
from torchvision.models import detection

SPEC_FILE = "stock_model.json"
SHAPES = "shapes"


class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        spec = json.loads(Path(__file__).with_name(SPEC_FILE).read_text())
        if spec["architecture"] == SHAPES:
            from shapes_net import build_shapes_detector  # packed beside this file

            self.model = build_shapes_detector(num_classes=spec["num_classes"])
        else:
            builder = getattr(detection, spec["architecture"])
            self.model = builder(weights=None, weights_backbone=None, num_classes=spec["num_classes"])

    def forward(self, images, targets=None):
        return self.model(images, targets)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        # the plain torchvision state_dict (the same file the other variants load)
        return self.model.load_state_dict(state_dict, strict, assign)
