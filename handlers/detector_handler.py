"""TorchServe adapter: hands TorchServe's batch to objdetect.pipeline.Detector and its answers back.

Everything else lives in the objdetect package (packed into the same .mar), which imports and
tests without TorchServe. TorchServe loads this file and calls `initialize` once per worker and
`handle` once per batch.
"""

import logging
import os
from http import HTTPStatus

import torch

from objdetect.pipeline import Detector, Request
from objdetect.settings import Settings

log = logging.getLogger(__name__)


class DetectorHandler:
    def __init__(self):
        self.detector = None
        self.initialized = False

    def initialize(self, context):
        properties = context.system_properties
        settings = Settings.load(context.model_yaml_config.get("handler"), os.environ)
        # Intra-op threads: the cores shared among this model's workers, so they do not oversubscribe.
        workers = max(1, int(context.model_yaml_config.get("maxWorkers", 1)))
        torch.set_num_threads(settings.torch_threads or max(1, len(os.sched_getaffinity(0)) // workers))
        gpu_id = properties.get("gpu_id")
        device = torch.device(f"cuda:{gpu_id}" if torch.cuda.is_available() and gpu_id is not None else "cpu")
        version = context.manifest["model"].get("modelVersion", "1.0")
        self.detector = Detector.load(properties["model_dir"], settings, device, context.model_name, version)
        warm_up_ms = self.detector.warm_up()  # TorchServe routes requests here only once this returns
        log.info("objdetect %s v%s on %s, %d torch threads, warmed up in %.0f ms, settings %s", context.model_name,
                 version, device, torch.get_num_threads(), warm_up_ms, settings)
        self.initialized = True

    def handle(self, data, context):
        requests = [
            Request(row, {k.lower(): v for k, v in context.get_all_request_header(i).items() if isinstance(v, str)})
            for i, row in enumerate(data)
        ]
        responses = self.detector(requests)
        for i, response in enumerate(responses):
            context.set_response_status(response.status, HTTPStatus(response.status).phrase, i)
            context.set_response_content_type(i, response.content_type)
        return [response.body for response in responses]
