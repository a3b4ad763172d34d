"""The TorchServe adapter's own logic: whatever TorchServe decoded, the pipeline gets the client's bytes."""

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import ts
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from detector_handler import DetectorHandler, _as_bytes
from objdetect.inputs import OptionLimits, parse_request
from objdetect.telemetry import RequestRecord
from objdetect_serving.paths import METRICS_CONFIG

pytestmark = pytest.mark.unit

LIMITS = OptionLimits(labels=("circle",), max_detections=100)


@pytest.mark.parametrize("sent, decoded", [
    (b'{"url": "https://a.example/x.png", "threshold": 0.25}', {"url": "https://a.example/x.png", "threshold": 0.25}),
    (b"0.25", "0.25"),  # a text form field
    (b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n"),  # bytes stay bytes
    (b"\xe2\x82\xac", "\u20ac"),
])
def test_values_torchserve_decoded_become_bytes_the_pipeline_reads_alike(sent, decoded):
    as_bytes = _as_bytes(decoded)
    assert isinstance(as_bytes, bytes)
    if isinstance(decoded, dict):
        assert json.loads(as_bytes) == json.loads(sent)
        assert parse_request({"body": as_bytes}, "application/json", LIMITS) == \
            parse_request({"body": sent}, "application/json", LIMITS)
    else:
        assert as_bytes == sent


@pytest.mark.parametrize("config, reported", [(METRICS_CONFIG, True),
                                              (Path(ts.__file__).parent / "configs" / "metrics.yaml", False)],
                         ids=["our metrics.yaml", "TorchServe's default"])
def test_metrics_reach_torchserve_and_an_undeclared_metric_never_fails_a_request(config, reported, caplog):
    handler = DetectorHandler()
    handler.detector = SimpleNamespace(name="detector", version="1.0", device=torch.device("cpu"))
    handler.metrics = MetricsCacheYamlImpl(str(config))
    handler.metrics.initialize_cache()
    record = RequestRecord("id-1", 200, None, {"predict": 80.0}, width=640, height=480, detections=3, batch_size=1)
    with caplog.at_level(logging.INFO):
        handler._report([record, record])
    metric_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[METRICS]objdetect_")]
    assert len(metric_lines) == (2 * 4 + 1 if reported else 0)  # per request: outcome, predict, size, detections
    assert sum("not declared" in r.getMessage() for r in caplog.records) == (0 if reported else 1)  # said once
    assert sum(r.getMessage().startswith('{"request_id":"id-1"') for r in caplog.records) == 2  # logged anyway
