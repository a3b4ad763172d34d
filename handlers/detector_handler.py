"""TorchServe adapter: hands TorchServe's batch to objdetect.pipeline.Detector and its answers back.

Everything else lives in the objdetect package (packed into the same .mar), which imports and
tests without TorchServe. TorchServe loads this file and calls `initialize` once per worker
process and `handle` once per batch; this is the only code that knows TorchServe's ways.
"""

import json
import logging
import os
import time
from http import HTTPStatus

import torch
from ts.metrics.metric_cache_errors import MetricsCacheKeyError
from ts.metrics.metric_type_enum import MetricTypes

from objdetect import telemetry
from objdetect.allocator import keep_freed_memory
from objdetect.drain import Drain
from objdetect.pipeline import Detector, Request
from objdetect.predict import choose_device, gpu_readings
from objdetect.settings import Settings

log = logging.getLogger(__name__)
# One JSON line per request. TorchServe's frontend writes a worker's lines that start with "{" to
# its stdout as they are (objdetect_serving/log4j2.xml): each is a whole CloudWatch log event.
request_log = logging.getLogger("objdetect.requests")
METRIC_TYPES = {"counter": MetricTypes.COUNTER, "histogram": MetricTypes.HISTOGRAM}


class DetectorHandler:
    def __init__(self):
        self.detector = None
        self.metrics = None
        self.cloudwatch_namespace = ""
        self.undeclared_metrics_logged = False
        self.drain = Drain()
        self.initialized = False

    def initialize(self, context):
        properties, config = context.system_properties, context.model_yaml_config
        settings = Settings.load(config.get("handler"), os.environ)
        # This process serves this model alone: its allocator is set for it before the model loads.
        malloc = "freed memory kept" if settings.keep_freed_memory and keep_freed_memory() else "malloc as it was"
        # Intra-op threads: the cores shared among this model's workers, so they do not oversubscribe.
        workers = max(1, int(config.get("maxWorkers", 1)))
        threads = settings.torch_threads or max(1, len(os.sched_getaffinity(0)) // workers)
        torch.set_num_threads(threads)
        device = choose_device(properties.get("gpu_id"), settings.require_cuda)
        if device.type == "cuda":
            # Process-wide, and this worker process serves this model alone: cuDNN picks the fastest
            # kernel per input shape (the model pads its batches to multiples of 32, bounding the shapes).
            torch.backends.cudnn.benchmark = True
        version = context.manifest["model"].get("modelVersion", "1.0")
        loading = time.perf_counter()  # reading the archive's model (and compiling its OpenVINO parts)
        self.detector = Detector.load(properties["model_dir"], settings, device, context.model_name, version,
                                      readers=int(config.get("batchSize", 1)), cpu_threads=threads)
        load_ms = (time.perf_counter() - loading) * 1000
        if self.detector.openvino_precision:
            # OpenVINO computes on its own threads; torch's small parts run between its calls, and
            # torch's idle OpenMP threads, spinning on the same cores, slow OpenVINO down.
            torch.set_num_threads(1)
        self.metrics, self.cloudwatch_namespace = context.metrics, settings.cloudwatch_namespace
        warm_up_ms = self.detector.warm_up()  # TorchServe routes requests here only once this returns
        log.info("objdetect %s v%s on %s, runtime %s, %d threads, %s, loaded in %.0f ms, warmed up in %.0f ms, "
                 "settings %s", context.model_name, version, device, self.detector.runtime, threads, malloc, load_ms,
                 warm_up_ms, settings)
        self.initialized = True

    def handle(self, data, context):
        requests = []
        for i, row in enumerate(data):
            headers = {k.lower(): v for k, v in context.get_all_request_header(i).items() if isinstance(v, str)}
            requests.append(Request({name: _as_bytes(value) for name, value in row.items()}, headers,
                                    context.get_request_id(i) or "", telemetry.client_request_id(headers)))
        responses = self.drain.answer(requests, self.detector)
        for i, response in enumerate(responses):
            context.set_response_status(response.status, HTTPStatus(response.status).phrase, i)
            context.set_response_content_type(i, response.content_type)
        self._report([response.record for response in responses if response.record])
        return [response.body for response in responses]

    def _report(self, records):
        """Each request's metrics to TorchServe, and its log line."""
        name, version = self.detector.name, self.detector.version
        try:
            for metric, value, dimensions in telemetry.observations(records, name, version):
                kind = telemetry.METRICS[metric][0]
                self.metrics.get_metric(metric, METRIC_TYPES[kind]).add_or_update(value, dimensions)
        except MetricsCacheKeyError:  # a TorchServe started without our metrics.yaml: serve on, say so once
            if not self.undeclared_metrics_logged:
                log.warning("objdetect's metrics are not declared (TorchServe's metrics_config is not "
                            "objdetect_serving/metrics.yaml): they are not reported", exc_info=True)
                self.undeclared_metrics_logged = True
        gauges = gpu_readings(self.detector.device)
        for record in records:
            request_log.info(telemetry.log_line(record, name, version, self.cloudwatch_namespace, gauges))


def _as_bytes(value) -> bytes:
    """What the client sent, as bytes. config.properties sets decode_input_request=false, so
    TorchServe passes bytes; under a configuration that lets it decode JSON and text bodies
    first, they are encoded back (losslessly) so the pipeline sees one form."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return value.encode("utf-8") if isinstance(value, str) else json.dumps(value).encode("utf-8")
