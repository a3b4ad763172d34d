"""The TorchServe adapter's own logic: whatever TorchServe decoded, the pipeline gets the client's bytes."""

import json

import pytest

from detector_handler import _as_bytes
from objdetect.inputs import OptionLimits, parse_request

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
