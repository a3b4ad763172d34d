"""The request path, in order: input -> decode -> transform -> predict -> postprocess.

`Detector` answers a batch of requests the way TorchServe hands them over. Each request travels
as an `Outcome`: what it has become so far, or the error that ended it, which every later step
passes through untouched (so a bad request gets its own 4xx, and the others are answered).
A batch's requests are read and decoded in threads (Pillow and the network release the GIL), a
lone request in the batch's own thread; the good ones then share one forward pass whatever their sizes.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from . import openvino_runtime, registry
from .auth import authorize
from .decode import DecodedImage, decode_image, decode_jpeg_on_gpu
from .detections import Detections
from .errors import RequestError
from .fetch import FetchPolicy, fetch_image
from .fold import fold_batch_norms
from .inputs import ImageRequest, OptionLimits, parse_request
from .messages import Request, Response
from .model_spec import ModelSpec
from .postprocess import postprocess
from .predict import predict
from .render import render_jpeg
from .settings import Settings
from .telemetry import RequestRecord
from .transform import is_sliver, pad_to_aspect, shrink_to_model, skip_identity_resize, to_model_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """One request on its way down the path: each step fills in what it made, or sets `error`."""

    request_id: str = ""
    client_request_id: str | None = None
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    request: ImageRequest | None = None  # input
    image: DecodedImage | None = None  # decode (transform may shrink it)
    model_input: torch.Tensor | None = None  # transform
    output: Mapping[str, torch.Tensor] | None = None  # predict
    batch_size: int = 0  # predict: the images in its forward pass
    error: RequestError | None = None
    started: float = field(default_factory=time.perf_counter)  # when its reading began: its total time

    def timed(self, step: str, ms: float, **made: Any) -> "Outcome":
        """This outcome with what `step` made, and the milliseconds it took."""
        return replace(self, timings_ms={**self.timings_ms, step: ms}, **made)


class Detector:
    def __init__(self, model: nn.Module, class_names: list[str], settings: Settings,
                 device: torch.device | str = "cpu", name: str = "detector", version: str = "1.0",
                 readers: int = 4, fetch: Callable[[str, FetchPolicy], bytes] = fetch_image,
                 cpu_threads: int | None = None, openvino_ir: Path | None = None):
        """`readers`: threads that read and decode requests, as many as a batch can hold.
        `cpu_threads`: what OpenVINO may use (default: torch's); `openvino_ir`: the parts converted
        ahead (an archive's), else they are converted here, which takes seconds."""
        self.device = torch.device(device)
        self.spec = ModelSpec.of(model)
        # openvino_precision: what OpenVINO runs at, None for eager torch; runtime: that, in words.
        self.openvino_precision, self.runtime = openvino_runtime.choose(settings.runtime, settings.cpu_precision,
                                                                       self.device)
        if self.openvino_precision:
            parts = openvino_runtime.load(openvino_ir) if openvino_ir else \
                openvino_runtime.convert(model, torch.rand(3, 480, 640))
            # A copy: the caller's model stays as it was. Its remaining torch parts have no convolutions.
            self.model = openvino_runtime.accelerate(model, *parts, self.openvino_precision,
                                                     cpu_threads or torch.get_num_threads(), settings.gather_roialign)
        else:
            self.model = self._eager(model, settings)
        skip_identity_resize(self.model)
        self.class_names = class_names
        self.settings = settings
        self.name, self.version = name, version
        self.fetch, self.fetch_policy = fetch, settings.fetch_policy()
        self.limits = OptionLimits(
            labels=tuple(n for n in class_names if n not in (registry.BACKGROUND, "N/A")),
            max_detections=self.spec.max_detections,
            default_threshold=settings.default_threshold,
        )
        self.fp16 = self.device.type == "cuda" and settings.cuda_fp16
        self._readers = ThreadPoolExecutor(max_workers=max(1, readers), thread_name_prefix="objdetect-read")

    def _eager(self, model: nn.Module, settings: Settings) -> nn.Module:
        if settings.fold_batch_norms:
            model, _ = fold_batch_norms(model)  # a folded copy: the caller's model stays as it was
        model = model.eval().to(self.device)
        # In place: the module's weights change layout (both ways, so a shared module is never left
        # in a layout this detector did not ask for).
        return model.to(memory_format=torch.channels_last if settings.channels_last else torch.contiguous_format)

    @classmethod
    def load(cls, model_dir: str | Path, settings: Settings, device: torch.device | str = "cpu",
             name: str = "detector", version: str = "1.0", readers: int = 4,
             cpu_threads: int | None = None) -> "Detector":
        """The detector an unpacked model archive describes (with its OpenVINO IR, when it has it)."""
        model, labels = registry.load_archived_model(Path(model_dir))
        ir = Path(model_dir) / openvino_runtime.IR_FOLDER
        return cls(model, labels, settings, device, name, version, readers, cpu_threads=cpu_threads,
                   openvino_ir=ir if ir.is_dir() else None)

    def warm_up(self) -> float:
        """One forward pass on a blank 4:3 image, before the first request: the first pass pays for
        oneDNN's kernel choice and the allocator's growth (on a GPU: CUDA's lazy loading and cuDNN's
        autotuning, seconds), which no user's request should. Returns its time in ms."""
        width, height = self.spec.input_size(4000, 3000)
        clock = time.perf_counter()
        predict(self.model, [torch.zeros(3, height, width, device=self.device)], self.fp16)
        return _ms_since(clock)

    def __call__(self, requests: list[Request]) -> list[Response]:
        return self.answer(self.read(requests))

    def read(self, requests: list[Request]) -> list[Outcome]:
        """input -> decode, each request alone; a lone one here, not handed to a reader and waited
        for. Separate from `answer` so that a batch job can read the next batch during this one's
        forward pass."""
        return [self._read(requests[0])] if len(requests) == 1 else list(self._readers.map(self._read, requests))

    def answer(self, outcomes: list[Outcome]) -> list[Response]:
        """transform -> predict (one forward pass for all) -> postprocess, in the calling thread."""
        outcomes = [self._transform(outcome) for outcome in outcomes]
        outcomes = self._predict(outcomes)
        return [self._respond(outcome) for outcome in outcomes]

    def _read(self, request: Request) -> Outcome:
        outcome, clock = Outcome(request.id, request.client_id), time.perf_counter()
        try:
            authorize(request.headers, self.settings.api_keys)
            parsed = parse_request(request.fields, request.headers.get("content-type"), self.limits)
            data = parsed.image
            if parsed.url is not None:
                data = self.fetch(parsed.url, self.fetch_policy)
                outcome, clock = outcome.timed("fetch", _ms_since(clock)), time.perf_counter()
            image = self._decode(data)
            return outcome.timed("decode", _ms_since(clock), request=parsed, image=image)
        except RequestError as error:
            return replace(outcome, error=error)
        except Exception as error:  # noqa: BLE001 - what we did not foresee fails this request alone
            return replace(outcome, error=_unforeseen(error, "reading"))

    def _decode(self, data: bytes) -> DecodedImage:
        if self.device.type == "cuda" and self.settings.cuda_jpeg_decode and data[:2] == b"\xff\xd8":
            try:
                return decode_jpeg_on_gpu(data, self.settings.max_pixels, self.device)
            except RequestError:
                raise
            except Exception:  # noqa: BLE001 - nvJPEG declines some JPEGs (CMYK, ...): Pillow takes them
                log.debug("nvJPEG declined an image; decoding it with Pillow", exc_info=True)
        return decode_image(data, self.settings.max_pixels, self.spec.input_size if self.settings.jpeg_draft else None)

    def _transform(self, outcome: Outcome) -> Outcome:
        """Here, in the batch's thread, not in the readers: torch ops there would each start their
        own OpenMP team beside the forward pass's, oversubscribing the cores."""
        if outcome.error:
            return outcome
        clock = time.perf_counter()
        image = outcome.image
        try:
            # A sliver is shrunk even on the exact path (the model would shrink it anyway), so that
            # its padding is small: at most max_size x max_size/20 pixels.
            if self.settings.pre_resize or is_sliver(image):
                image = shrink_to_model(image, self.spec)
            model_input = pad_to_aspect(to_model_input(image.pixels, self.device), self.spec)
        except Exception as error:  # noqa: BLE001
            return replace(outcome, error=_unforeseen(error, "preparing"))
        return outcome.timed("transform", _ms_since(clock), image=image, model_input=model_input)

    def _predict(self, outcomes: list[Outcome]) -> list[Outcome]:
        ready = [outcome for outcome in outcomes if not outcome.error]
        if not ready:
            return outcomes
        clock = time.perf_counter()
        try:
            outputs = predict(self.model, [outcome.model_input for outcome in ready], self.fp16)
            predicted = [replace(outcome, output=output) for outcome, output in zip(ready, outputs)]
        except torch.OutOfMemoryError:
            raise  # the server's problem, not the images': TorchServe answers 507
        except Exception:
            # An image we did not foresee breaks the batch: run its images one by one so only it fails.
            log.exception("a forward pass of %d images failed; running them one by one", len(ready))
            predicted = [self._predict_alone(outcome) for outcome in ready]
        predict_ms = _ms_since(clock)
        # Debug only: every request's own log line already carries its batch_size and predict_ms.
        log.debug("batch of %d requests: %d images predicted in %.1f ms", len(outcomes), len(ready), predict_ms)
        answered = iter(outcome.timed("predict", predict_ms, batch_size=len(ready)) for outcome in predicted)
        return [outcome if outcome.error else next(answered) for outcome in outcomes]

    def _predict_alone(self, outcome: Outcome) -> Outcome:
        try:
            return replace(outcome, output=predict(self.model, [outcome.model_input], self.fp16)[0])
        except torch.OutOfMemoryError:
            raise
        except Exception:  # noqa: BLE001 - answered to its own client
            log.exception("prediction failed for one image")
            return replace(outcome, error=RequestError("prediction_failed", "the model failed on this image", status=500))

    def _respond(self, outcome: Outcome) -> Response:
        if not outcome.error:
            try:
                return self._answer(outcome)
            except Exception as error:  # noqa: BLE001
                outcome = replace(outcome, error=_unforeseen(error, "answering"))
        image = outcome.image
        size = {"width": image.width, "height": image.height} if image else {}
        return Response.error(outcome.error, outcome.request_id, outcome.client_request_id,
                              batch_size=outcome.batch_size, **size,
                              timings_ms={**outcome.timings_ms, "total": _ms_since(outcome.started)})

    def _answer(self, outcome: Outcome) -> Response:
        image = outcome.image
        size = {"width": image.width, "height": image.height}
        clock = time.perf_counter()
        options = outcome.request.options
        detections = postprocess(outcome.output, self.class_names, image, options)
        body = render_jpeg(image, detections) if options.render else None
        timings = {**outcome.timings_ms, "postprocess": _ms_since(clock), "total": _ms_since(outcome.started)}
        record = RequestRecord(outcome.request_id, 200, None, timings, **size, detections=len(detections),
                               batch_size=outcome.batch_size, client_request_id=outcome.client_request_id)
        if body is not None:
            return Response(200, body, "image/jpeg", record)
        return Response(200, json.dumps(self._body(image, detections, timings)).encode("utf-8"), record=record)

    def _body(self, image: DecodedImage, detections: Detections, timings_ms: Mapping[str, float]) -> dict:
        """The JSON response body (schema in the README)."""
        return {
            "model": self.name,
            "version": self.version,
            "width": image.width,
            "height": image.height,
            "detections": detections.to_json(),
            "timings_ms": {k: round(v, 2) for k, v in timings_ms.items()},
        }


def _unforeseen(error: Exception, step: str) -> RequestError:
    """An exception no step turned into a RequestError: a defect of ours that this request found.
    Logged with its traceback; the request gets a 500 of its own, and its batch is answered.
    Out of GPU memory is re-raised: the server's problem, which TorchServe answers with 507."""
    if isinstance(error, torch.OutOfMemoryError):
        raise error
    log.error("unexpected %s while %s a request", type(error).__name__, step, exc_info=error)
    return RequestError("request_failed", f"the server failed while {step} this request "
                        f"({type(error).__name__}); it was logged", status=500)


def _ms_since(clock: float) -> float:
    return (time.perf_counter() - clock) * 1000
