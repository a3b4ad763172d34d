"""OpenVINO for the dense parts of a torchvision detector on a CPU: the runtime="openvino" setting.

OpenVINO runs what is convolutions and matrix products: the backbone with its FPN, the RPN head,
and the box head with the box predictor. torchvision runs the rest, unchanged: the transform
(resize, normalise, pad), anchors, proposal decoding and NMS, box postprocessing; and RoIAlign,
as one weighted gather (objdetect/roi_align.py). Those are the steps that compute sizes in Python
or have data-dependent shapes, which a traced graph would freeze (whole-model exports gave wrong
boxes at sizes other than the one exported); the parts converted here have none, and are
converted with dynamic batch, height, width and box count, so no image size is baked in. The
result equals `model(images)` up to float rounding in fp32 (tests/test_openvino_runtime.py, over
100+ sizes), and moves a little in bf16.

Conversion traces the parts once (seconds), so archives carry them as OpenVINO IR
(`convert` + `save` at `make mar`); a worker only reads and compiles them (a fraction of a second).
"""

from __future__ import annotations

import copy
import json
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .roi_align import GatherRoIAlign

IR_FOLDER = "openvino"  # in an archive: <part>.xml/.bin and parts.json
PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # our setting -> OpenVINO's INFERENCE_PRECISION_HINT


def available() -> bool:
    """Whether OpenVINO is installed (it is an optional dependency: GPU images do without it)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def choose(runtime: str, precision: str, device: torch.device) -> tuple[str | None, str]:
    """The precision OpenVINO runs at here, or None for eager torch; and why, for the log."""
    if runtime != "openvino":
        return None, "torch (runtime=torch)"
    if device.type != "cpu":
        return None, f"torch (OpenVINO serves CPU workers; this one has {device})"
    if not available():
        return None, "torch (runtime=openvino, but OpenVINO is not installed: pip install 'objdetect[openvino]')"
    if precision == "bf16" and not bf16_supported():
        return "fp32", "openvino fp32 (bf16 asked for, but this CPU has no native bfloat16: avx512_bf16 or AMX)"
    return precision, f"openvino {precision}"


def bf16_supported() -> bool:
    """Whether this CPU computes bfloat16 natively (avx512_bf16 or AMX), as OpenVINO reports it."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


PARTS = ("backbone", "rpn", "box_head")


class _Traceable(nn.Module):
    """A part of `model` with tensors in and a flat tuple of tensors out, as tracing needs."""

    def __init__(self, part: str, model: nn.Module):
        super().__init__()
        self.part = part
        self.backbone, self.rpn_head = model.backbone, model.rpn.head
        self.box_head, self.box_predictor = model.roi_heads.box_head, model.roi_heads.box_predictor

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.part == "backbone":
            return tuple(self.backbone(inputs[0]).values())
        if self.part == "rpn":
            objectness, deltas = self.rpn_head(list(inputs))
            return (*objectness, *deltas)
        return self.box_predictor(self.box_head(inputs[0]))


def convert(model: nn.Module, example: torch.Tensor) -> tuple[dict, dict]:
    """The three parts of `model` as OpenVINO models with dynamic shapes, traced on the model's own
    intermediate values for `example` (one image, (3, h, w) floats); and what `accelerate` needs to
    wire them back (the backbone's feature names)."""
    import openvino as ov

    model = model.eval()
    with torch.no_grad():  # not inference_mode: tracing cannot use inference tensors
        images, _ = model.transform([example])
        features = model.backbone(images.tensors)
        proposals = torch.tensor([[0.0, 0.0, 32.0, 32.0]] * 8)
        pooled = model.roi_heads.box_roi_pool(features, [proposals], images.image_sizes)
    levels = list(features.values())
    examples = {"backbone": (images.tensors,), "rpn": tuple(levels), "box_head": (pooled,)}
    shapes = {"backbone": [[-1, 3, -1, -1]], "rpn": [[-1, f.shape[1], -1, -1] for f in levels],
              "box_head": [[-1, *pooled.shape[1:]]]}
    with warnings.catch_warnings():  # tracing warns of what it freezes; these parts freeze nothing
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace's deprecation, which OpenVINO uses
        converted = {part: ov.convert_model(_Traceable(part, model).eval(), example_input=examples[part],
                                            input=[ov.PartialShape(shape) for shape in shapes[part]])
                     for part in examples}
    return converted, {"features": list(features)}


def save(models: dict, wiring: dict, folder: Path) -> None:
    import openvino as ov

    folder.mkdir(parents=True, exist_ok=True)
    for part, ov_model in models.items():
        ov.save_model(ov_model, folder / f"{part}.xml", compress_to_fp16=False)  # fp32 weights: exact fp32
    (folder / "parts.json").write_text(json.dumps(wiring))


def load(folder: Path) -> tuple[dict, dict]:
    import openvino as ov

    core = ov.Core()
    wiring = json.loads((folder / "parts.json").read_text())
    return {part: core.read_model(folder / f"{part}.xml") for part in PARTS}, wiring


def cpu_config(precision: str, threads: int) -> dict:
    """How a worker compiles the parts for the CPU: at `precision` ("fp32" or "bf16"), on `threads`."""
    # No CPU pinning: each worker process would pin its threads from core 0 up, not knowing of the
    # others, so two workers of one thread each shared core 0 (measured: 60 ms per image each, 44-49
    # unpinned; one process alone, 44 either way).
    return {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False}


class _Part(nn.Module):
    """One compiled OpenVINO model in a torchvision module's place: torch tensors in and out."""

    def __init__(self, compiled, pack: Callable[[list[torch.Tensor]], object]):
        super().__init__()
        self.compiled, self.outputs, self.pack = compiled, compiled.outputs, pack
        self._local = threading.local()  # an infer request per calling thread: they are not thread-safe

    def forward(self, inputs):
        flat = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        if not hasattr(self._local, "request"):
            self._local.request = self.compiled.create_infer_request()
        result = self._local.request.infer([tensor.contiguous().numpy() for tensor in flat])
        return self.pack([torch.from_numpy(result[output]) for output in self.outputs])


class _PassPair(nn.Module):
    """Sits in box_predictor's place: the OpenVINO box head already returns (class logits, box deltas)."""

    def forward(self, pair):
        return pair


def accelerate(model: nn.Module, models: dict, wiring: dict, precision: str, threads: int,
               gather_roialign: bool = True) -> nn.Module:
    """A copy of `model` whose backbone, RPN head and box head run the compiled OpenVINO `models`,
    at `precision` ("fp32" or "bf16") on `threads` CPU threads; with `gather_roialign`, its RoIAlign
    as one weighted gather (objdetect/roi_align.py)."""
    import openvino as ov

    core = ov.Core()
    compiled = {part: core.compile_model(ov_model, "CPU", cpu_config(precision, threads))
                for part, ov_model in models.items()}
    fast = copy.deepcopy(model).eval()
    names = wiring["features"]
    fast.backbone = _Part(compiled["backbone"], lambda outs: OrderedDict(zip(names, outs)))
    fast.rpn.head = _Part(compiled["rpn"], lambda outs: (outs[: len(outs) // 2], outs[len(outs) // 2:]))
    fast.roi_heads.box_head = _Part(compiled["box_head"], tuple)
    fast.roi_heads.box_predictor = _PassPair()
    if gather_roialign:
        fast.roi_heads.box_roi_pool = GatherRoIAlign(fast.roi_heads.box_roi_pool)
    return fast
