"""What an operator of a real TorchServe sees: our metrics on the metrics port with the right counts
per outcome and stage, the request id in the header, the error body and the log line, and one JSON
log line per request that holds no key and no image."""

import base64
import json
import re
import time
from collections import Counter

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from objdetect import synthetic

pytestmark = pytest.mark.integration


def scrape(server) -> dict[tuple[str, tuple], float]:
    """Every sample on /metrics, by (name, sorted labels), Hostname left out."""
    text = requests.get(f"{server.url('metrics')}/metrics", timeout=10).text
    return {(sample.name, tuple(sorted((k, v) for k, v in sample.labels.items() if k != "Hostname"))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def json_lines(server) -> list[dict]:
    lines = (server.workdir / "torchserve.out").read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def until(condition, timeout_s=10.0):
    """Metric and log lines travel from the worker through the frontend: allow them a moment."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def model(labels: dict) -> tuple:
    return tuple(sorted({"model_name": "exact", "model_version": "1.0", **labels}.items()))


def test_metrics_count_each_outcome_and_time_each_stage(server):
    image = synthetic.encode(synthetic.generate(synthetic.SAMPLE_SEED).image)
    before = scrape(server)
    sent = {"ok": 3, "not_an_image": 2, "bad_json": 1}
    for _ in range(sent["ok"]):
        assert requests.post(f"{server.url()}/predictions/exact", data=image, timeout=60).status_code == 200
    for _ in range(sent["not_an_image"]):
        assert requests.post(f"{server.url()}/predictions/exact", data=b"junk", timeout=60).status_code == 400
    refused = requests.post(f"{server.url()}/predictions/exact", data=b"{not json", timeout=60,
                            headers={"Content-Type": "application/json"})
    assert refused.status_code == 400 and refused.json()["error"] == "bad_json"

    def grown(name, labels):
        key = (name, model(labels))
        return scrape(server).get(key, 0) - before.get(key, 0)

    for code, count in sent.items():
        status = "200" if code == "ok" else "400"
        assert until(lambda: grown("objdetect_requests_total", {"status": status, "code": code}) == count), code
    for stage in ("decode", "transform", "predict", "postprocess"):
        assert until(lambda: grown("objdetect_stage_seconds_count", {"stage": stage}) == 3), stage
    assert grown("objdetect_stage_seconds_sum", {"stage": "predict"}) > 0
    assert grown("objdetect_detections_per_image_sum", {}) == 18  # 6 shapes, 3 times
    assert grown("objdetect_image_megapixels_count", {}) == 3 and grown("objdetect_batch_size_count", {}) == 3
    # TorchServe's own metrics are still there beside ours.
    assert any(name == "ts_queue_latency_microseconds_total" for name, _ in scrape(server))  # the parser adds _total


def test_the_request_id_is_in_the_header_the_error_body_and_the_log_line(server):
    refused = requests.post(f"{server.url()}/predictions/exact", data=b"junk", timeout=60,
                            headers={"X-Request-Id": "client-7f3a"})
    body = refused.json()
    assert refused.headers["X-Request-Id"] == body["request_id"] and len(body["request_id"]) == 36  # a UUID
    assert body["client_request_id"] == "client-7f3a"
    line = until(lambda: next((line for line in json_lines(server) if line["request_id"] == body["request_id"]), None))
    assert line["client_request_id"] == "client-7f3a" and line["outcome"] == "not_an_image"
    assert (line["model"], line["version"], line["status"]) == ("exact", "1.0", 400)


def test_one_json_line_per_request_with_timings_and_size_and_no_key_or_image(server):
    image = synthetic.encode(synthetic.generate(synthetic.SAMPLE_SEED).image)
    answered = requests.post(f"{server.url()}/predictions/guarded", timeout=60, headers={"X-API-Key": "test-key"},
                             json={"b64": base64.b64encode(image).decode()})
    assert answered.status_code == 200, answered.text
    request_id = answered.headers["X-Request-Id"]
    lines = until(lambda: [line for line in json_lines(server) if line["request_id"] == request_id])
    assert len(lines) == 1
    line = lines[0]
    assert (line["model"], line["status"], line["outcome"], line["detections"]) == ("guarded", 200, "ok", 6)
    assert (line["width"], line["height"]) == synthetic.generate(synthetic.SAMPLE_SEED).image.size
    assert line["predict_ms"] > 0 and line["total_ms"] >= line["predict_ms"]
    raw = (server.workdir / "torchserve.out").read_text(errors="replace")
    assert "test-key" not in raw and base64.b64encode(image).decode()[:40] not in raw
    # The frontend's echo of each metric line is not in its log.
    assert "result=[METRICS]objdetect" not in raw


ACCESS_LINE = re.compile(r'\[INFO ?\] \S+ ACCESS_LOG - /127\.0\.0\.1:\d+ "POST /predictions/exact HTTP/1\.1" 200 \d+$')


def test_a_request_leaves_two_lines_on_stdout_its_json_line_and_the_access_logs(server):
    out = server.workdir / "torchserve.out"
    offset = out.stat().st_size
    image = synthetic.encode(synthetic.generate(synthetic.SAMPLE_SEED).image)
    ids = [requests.post(f"{server.url()}/predictions/exact", data=image, timeout=60).headers["X-Request-Id"]
           for _ in range(3)]

    def since() -> list[str]:
        with open(out, "rb") as file:
            file.seek(offset)
            return file.read().decode(errors="replace").splitlines()

    def kinds(lines: list[str]) -> Counter:
        return Counter(json.loads(line)["request_id"] if line.startswith("{")
                       else "access" if ACCESS_LINE.search(line) else line for line in lines)

    expected = Counter({**dict.fromkeys(ids, 1), "access": 3})
    until(lambda: kinds(since()) >= expected)
    time.sleep(1)  # time for any line logged after a request's own two to arrive too
    assert kinds(since()) == expected
    ts_log = (server.log_dir / "ts_log.log").read_text(errors="replace")
    assert ts_log.count("Torchserve version:") == 1  # the frontend's own lines, once each
