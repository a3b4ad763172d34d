"""What each answered request tells an operator: one `RequestRecord`, made by the request path.

It leaves the worker twice, rendered here and sent by the TorchServe adapter:
- as TorchServe model metrics (`observations`), declared in objdetect_serving/metrics.yaml as
  TorchServe requires; the metrics port serves them as Prometheus text beside TorchServe's own;
- as one JSON log line (`log_line`): request id, model, version, status, error code, timings and
  image size, never the image or a key. With a CloudWatch namespace set (the ECS task sets it) the
  same line is also in CloudWatch's embedded metric format, so CloudWatch Logs turns it into
  metrics, percentiles included, without a metrics port or an agent (docs/operations.md "Observability").
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Iterator, Mapping

STAGES = ("fetch", "decode", "transform", "predict", "postprocess")
# A client's X-Request-Id is kept when it looks like an id (it lands in logs and bodies verbatim).
CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# name: (TorchServe's metric type, unit, dimensions). metrics.yaml declares exactly these (a test
# holds them equal). Histograms get TorchServe's fixed buckets (Prometheus' defaults, 5 ms to 10 s),
# so times are in seconds.
METRICS = {
    "objdetect_requests_total": ("counter", "count", ("model_name", "model_version", "status", "code")),
    "objdetect_stage_seconds": ("histogram", "s", ("model_name", "model_version", "stage")),
    "objdetect_batch_size": ("histogram", "count", ("model_name", "model_version")),
    "objdetect_image_megapixels": ("histogram", "megapixels", ("model_name", "model_version")),
    "objdetect_detections_per_image": ("histogram", "count", ("model_name", "model_version")),
}


@dataclass(frozen=True)
class RequestRecord:
    request_id: str  # TorchServe's, which its frontend also sends as the X-Request-Id response header
    status: int
    error: str | None = None  # our error code, when the request got one
    timings_ms: Mapping[str, float] = field(default_factory=dict)  # STAGES that ran, and "total"
    width: int | None = None  # the image as sent (boxes refer to it)
    height: int | None = None
    detections: int | None = None
    batch_size: int = 0  # images in the forward pass this request shared; 0: it reached none
    client_request_id: str | None = None  # the client's X-Request-Id, when it sent a usable one


def client_request_id(headers: Mapping[str, str]) -> str | None:
    """The client's X-Request-Id, when it looks like an id. It is kept beside TorchServe's id, not
    instead of it: the frontend writes its own id into the response header (and a client's ids may
    collide with another client's), so the server's id is the one that names a request everywhere."""
    sent = headers.get("x-request-id", "").strip()
    return sent if CLIENT_REQUEST_ID.fullmatch(sent) else None


def observations(records: list[RequestRecord], model: str, version: str) -> Iterator[tuple[str, float, list[str]]]:
    """(metric, value, dimension values) for a batch's records: each request's outcome, stage times,
    image size and detections, and the size of the forward pass they shared (once per pass)."""
    for record in records:
        yield "objdetect_requests_total", 1, [model, version, str(record.status), record.error or "ok"]
        for stage in STAGES:
            if stage in record.timings_ms:
                yield "objdetect_stage_seconds", record.timings_ms[stage] / 1000, [model, version, stage]
        if record.width and record.height:
            yield "objdetect_image_megapixels", record.width * record.height / 1e6, [model, version]
        if record.detections is not None:
            yield "objdetect_detections_per_image", record.detections, [model, version]
    forward_pass = max((record.batch_size for record in records), default=0)
    if forward_pass:
        yield "objdetect_batch_size", forward_pass, [model, version]


def log_line(record: RequestRecord, model: str, version: str, cloudwatch_namespace: str = "",
             gauges: Mapping[str, float] | None = None) -> str:
    """One JSON object on one line. `gauges`: the worker's own readings (GPU memory, say)."""
    line = {
        "request_id": record.request_id, "client_request_id": record.client_request_id, "model": model, "version": version, "status": record.status,
        "outcome": record.error or "ok", "width": record.width, "height": record.height,
        "megapixels": round(record.width * record.height / 1e6, 3) if record.width and record.height else None,
        "detections": record.detections, "batch_size": record.batch_size or None,
        **{f"{stage}_ms": round(ms, 2) for stage, ms in record.timings_ms.items()},
        **(gauges or {}),
        # Counted by CloudWatch: every request, and those that failed on the service's side.
        "requests": 1, "server_errors": int(record.status >= 500),
    }
    if cloudwatch_namespace:
        line["_aws"] = _embedded_metrics(line, cloudwatch_namespace)
    return json.dumps(line, separators=(",", ":"))


# The line's numeric members that become CloudWatch metrics, with their units (monitoring.tf reads them).
EMBEDDED_METRICS = {"requests": "Count", "server_errors": "Count", "megapixels": "None", "detections": "Count",
          "batch_size": "Count", **{f"{stage}_ms": "Milliseconds" for stage in (*STAGES, "total")},
          "gpu_memory_mb": "Megabytes", "gpu_utilization_percent": "Percent"}


def _embedded_metrics(line: dict, namespace: str) -> dict:
    """CloudWatch's embedded metric format: which members are metrics, by which dimensions. Per
    model: all of them; per model and outcome ("ok" or the error code): the request count."""
    measured = [{"Name": name, "Unit": unit} for name, unit in EMBEDDED_METRICS.items() if line.get(name) is not None]
    return {"Timestamp": int(time.time() * 1000), "CloudWatchMetrics": [
        {"Namespace": namespace, "Dimensions": [["model"]], "Metrics": measured},
        {"Namespace": namespace, "Dimensions": [["model", "outcome"]], "Metrics": [{"Name": "requests", "Unit": "Count"}]},
    ]}
