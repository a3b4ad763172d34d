"""The request path, in order: input -> decode -> transform -> predict -> postprocess.

`Detector` serves a batch of requests the way TorchServe hands them over. Each request is read
and decoded on its own (in threads: Pillow and the network release the GIL), so a bad one
becomes its own 4xx response; the good ones share one forward pass whatever their sizes.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from . import registry
from .decode import DecodedImage, decode_image, decode_jpeg_on_gpu
from .detections import Detections
from .errors import RequestError
from .fetch import fetch_image
from .fold import fold_batch_norms
from .inputs import ImageRequest, OptionLimits, parse_request
from .postprocess import postprocess
from .predict import predict
from .render import render_jpeg
from .settings import Settings
from .transform import fit_to_model, model_input_size, to_model_input

log = logging.getLogger(__name__)
MODEL_INFO = "model.json"  # written into the archive by scripts/build_mar.py
# The detectors resize the shorter side up and the longer side down; a sliver of an image
# would resize to zero pixels and fail the whole batch, so such shapes are refused up front.
MAX_ASPECT_RATIO = 20


@dataclass(frozen=True)
class Request:
    fields: Mapping[str, Any]  # TorchServe's named inputs: "body", or form fields
    headers: Mapping[str, str] = field(default_factory=dict)  # names lower-cased


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def error(cls, error: RequestError) -> "Response":
        return cls(error.status, json.dumps(error.to_dict()).encode("utf-8"))


@dataclass
class _Decoded:
    """A request that passed input and decode, waiting for its share of the forward pass."""

    request: ImageRequest
    image: DecodedImage
    timings_ms: dict[str, float]


class Detector:
    def __init__(self, model: nn.Module, class_names: list[str], settings: Settings,
                 device: torch.device | str = "cpu", name: str = "detector", version: str = "1.0",
                 fetch: Callable[[str, Settings], bytes] = fetch_image):
        self.device = torch.device(device)
        if settings.fold_batch_norms:
            model, _ = fold_batch_norms(model)  # a folded copy: the caller's model stays as it was
        self.model = model.eval().to(self.device)
        # In place: the module's weights change layout (both ways, so a shared module is never left
        # in a layout this detector did not ask for).
        self.model.to(memory_format=torch.channels_last if settings.channels_last else torch.contiguous_format)
        if self.device.type == "cuda":
            # cuDNN picks the fastest kernel per input shape (the model pads its batches to
            # multiples of 32, which bounds the number of shapes).
            torch.backends.cudnn.benchmark = True
        self.class_names = class_names
        self.settings = settings
        self.name, self.version = name, version
        self.fetch = fetch
        self.limits = OptionLimits(
            labels=tuple(n for n in class_names if n not in (registry.BACKGROUND, "N/A")),
            max_detections=model.roi_heads.detections_per_img,
            default_threshold=settings.default_threshold,
        )
        # The size the model resizes to (GeneralizedRCNNTransform's): what decoding need not exceed.
        self.model_size = partial(model_input_size, min_size=model.transform.min_size[-1],
                                  max_size=model.transform.max_size)
        self.fp16 = self.device.type == "cuda" and settings.cuda_fp16
        self._readers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="objdetect-read")

    @classmethod
    def load(cls, model_dir: str | Path, settings: Settings, device: torch.device | str = "cpu",
             name: str = "detector", version: str = "1.0") -> "Detector":
        """The detector an archive describes: model.json names the architecture, labels and weights."""
        model_dir = Path(model_dir)
        info = json.loads((model_dir / MODEL_INFO).read_text())
        state_dict = registry.load_state_dict(model_dir / info["weights"])
        model = registry.build_model(info["architecture"], info["labels"], state_dict)
        return cls(model, info["labels"], settings, device, name, version)

    def warm_up(self) -> float:
        """One forward pass on a blank 4:3 image, before the first request: the first pass pays for
        oneDNN's kernel choice and the allocator's growth (on a GPU: CUDA's lazy loading and cuDNN's
        autotuning, seconds), which no user's request should. Returns its time in ms."""
        width, height = self.model_size(4000, 3000)
        clock = time.perf_counter()
        predict(self.model, [torch.zeros(3, height, width, device=self.device)], self.fp16)
        return _ms_since(clock)

    def __call__(self, requests: list[Request]) -> list[Response]:
        started = time.perf_counter()
        decoded = list(self._readers.map(self._read, requests))  # input -> decode
        ready = [d for d in decoded if isinstance(d, _Decoded)]
        outputs, predict_ms = self._predict(ready)  # transform -> predict
        log.info("batch of %d requests: %d images predicted in %.1f ms", len(requests), len(ready), predict_ms)
        results = iter(outputs)
        return [d if isinstance(d, Response) else self._respond(d, next(results), predict_ms, started)
                for d in decoded]  # postprocess -> response

    def _read(self, request: Request) -> _Decoded | Response:
        timings: dict[str, float] = {}
        try:
            self._authorize(request.headers)
            clock = time.perf_counter()
            parsed = parse_request(request.fields, request.headers.get("content-type"), self.limits)
            data = parsed.image
            if parsed.url is not None:
                data = self.fetch(parsed.url, self.settings)
                timings["fetch"] = _ms_since(clock)
                clock = time.perf_counter()
            image = self._decode(data)
            timings["decode"] = _ms_since(clock)
            if max(image.width, image.height) > MAX_ASPECT_RATIO * min(image.width, image.height):
                raise RequestError("bad_image_shape", f"the image is {image.width}x{image.height}; "
                                   f"sides may differ by at most {MAX_ASPECT_RATIO}x")
            return _Decoded(parsed, image, timings)
        except RequestError as error:
            return Response.error(error)

    def _decode(self, data: bytes) -> DecodedImage:
        if self.device.type == "cuda" and self.settings.cuda_jpeg_decode and data[:2] == b"\xff\xd8":
            try:
                return decode_jpeg_on_gpu(data, self.settings.max_pixels, self.device)
            except RequestError:
                raise
            except Exception:  # noqa: BLE001 - nvJPEG declines some JPEGs (CMYK, ...): Pillow takes them
                log.debug("nvJPEG declined an image; decoding it with Pillow", exc_info=True)
        return decode_image(data, self.settings.max_pixels, self.model_size if self.settings.jpeg_draft else None)

    def _authorize(self, headers: Mapping[str, str]) -> None:
        if not self.settings.api_keys:
            return
        offered = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not any(hmac.compare_digest(offered.encode(), key.encode()) for key in self.settings.api_keys):
            raise RequestError("unauthorized", "a valid API key is required: send it as "
                               "'Authorization: Bearer <key>' or 'X-API-Key: <key>'", status=401)

    def _predict(self, ready: list[_Decoded]) -> tuple[list, float]:
        if not ready:
            return [], 0.0
        clock = time.perf_counter()
        if self.settings.pre_resize:
            # Here, not in the reader threads: torch ops there would each start their own OpenMP
            # team beside the forward pass's, oversubscribing the cores.
            for decoded in ready:
                decoded.image = fit_to_model(decoded.image, self.model.transform.min_size[-1],
                                             self.model.transform.max_size)
        inputs = [to_model_input(decoded.image.pixels, self.device) for decoded in ready]
        try:
            outputs = predict(self.model, inputs, self.fp16)
        except torch.OutOfMemoryError:
            raise  # the server's problem, not the images': TorchServe answers 507
        except Exception:
            if len(inputs) == 1:
                raise
            # One image we did not foresee breaks the batch: run them one by one so only it fails.
            log.exception("batch of %d failed; retrying its images one by one", len(inputs))
            outputs = [self._predict_alone(x) for x in inputs]
        return outputs, _ms_since(clock)

    def _predict_alone(self, image: torch.Tensor):
        try:
            return predict(self.model, [image], self.fp16)[0]
        except Exception as error:  # noqa: BLE001 - reported to its own client below
            log.exception("prediction failed for one image")
            return error

    def _respond(self, decoded: _Decoded, output, predict_ms: float, started: float) -> Response:
        if isinstance(output, Exception):
            return Response(500, json.dumps({"error": "prediction_failed",
                                             "message": "the model failed on this image"}).encode())
        clock = time.perf_counter()
        image, options = decoded.image, decoded.request.options
        detections = postprocess(output, self.class_names, image, options)
        timings = {**decoded.timings_ms, "predict": predict_ms, "postprocess": _ms_since(clock)}
        if options.render:
            return Response(200, render_jpeg(image, detections), "image/jpeg")
        timings["total"] = _ms_since(started)
        return Response(200, json.dumps(self._body(image, detections, timings)).encode("utf-8"))

    def _body(self, image: DecodedImage, detections: Detections, timings_ms: dict[str, float]) -> dict:
        """The JSON response body (schema in the README)."""
        return {
            "model": self.name,
            "version": self.version,
            "width": image.width,
            "height": image.height,
            "detections": detections.to_json(),
            "timings_ms": {k: round(v, 2) for k, v in timings_ms.items()},
        }


def _ms_since(clock: float) -> float:
    return (time.perf_counter() - clock) * 1000
