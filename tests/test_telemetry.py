"""What a request tells operators (objdetect/telemetry.py), without TorchServe: the metrics as
metrics.yaml declares them, the client's request id, the log line and its embedded metric format,
and the frontend's log configuration. Against a real TorchServe: test_observability.py."""

import json
import re
import time
import xml.etree.ElementTree as ElementTree

import pytest
import torch
import yaml

from objdetect import synthetic, telemetry
from objdetect.messages import Request
from objdetect.pipeline import Detector
from objdetect.predict import gpu_readings
from objdetect.telemetry import RequestRecord
from objdetect_serving.paths import LOG_CONFIG, METRICS_CONFIG

pytestmark = pytest.mark.unit

SERVED = RequestRecord("id-1", 200, None, {"decode": 3.0, "transform": 1.0, "predict": 80.0, "postprocess": 1.0,
                                          "total": 86.0}, width=640, height=480, detections=5, batch_size=2)
REFUSED = RequestRecord("id-2", 400, "not_an_image", {"total": 2.0})


def test_metrics_yaml_declares_exactly_the_metrics_we_report():
    declared = yaml.safe_load(METRICS_CONFIG.read_text())["model_metrics"]
    ours = {metric["name"]: (kind, metric["unit"], tuple(metric["dimensions"]))
            for kind, metrics in declared.items() for metric in metrics if metric["name"].startswith("objdetect_")}
    assert ours == telemetry.METRICS
    # TorchServe's own frontend metrics are still declared (the file replaces its default).
    assert {"Requests5XX", "QueueTime", "ts_queue_latency_microseconds"} <= {
        metric["name"] for metrics in yaml.safe_load(METRICS_CONFIG.read_text())["ts_metrics"].values()
        for metric in metrics}


@pytest.mark.parametrize("sent, kept", [("abc-123", "abc-123"), ("  7f3a:req.9_x ", "7f3a:req.9_x"), ("", None),
                                        ("two words", None), ("x" * 129, None), ('{"inject":1}\nfake', None)])
def test_a_clients_request_id_is_kept_only_when_it_looks_like_one(sent, kept):
    assert telemetry.client_request_id({"x-request-id": sent}) == kept


def test_observations_count_outcomes_and_time_each_stage_in_seconds_and_the_pass_once():
    seen = list(telemetry.observations([SERVED, REFUSED], "detector", "1.0"))
    dims = ["detector", "1.0"]
    assert seen == [
        ("objdetect_requests_total", 1, [*dims, "200", "ok"]),
        *[("objdetect_stage_seconds", ms / 1000, [*dims, stage])
          for stage, ms in (("decode", 3.0), ("transform", 1.0), ("predict", 80.0), ("postprocess", 1.0))],
        ("objdetect_image_megapixels", 0.3072, dims),
        ("objdetect_detections_per_image", 5, dims),
        ("objdetect_requests_total", 1, [*dims, "400", "not_an_image"]),
        ("objdetect_batch_size", 2, dims),
    ]
    for name, _, dimensions in seen:  # as many values as metrics.yaml declares dimensions
        assert len(dimensions) == len(telemetry.METRICS[name][2])


def test_the_log_line_is_one_json_object_with_what_operators_need():
    line = telemetry.log_line(SERVED, "detector", "1.0", gauges={"gpu_memory_mb": 812.0})
    assert "\n" not in line
    fields = json.loads(line)
    assert fields["request_id"] == "id-1" and fields["status"] == 200 and fields["outcome"] == "ok"
    assert (fields["width"], fields["height"], fields["detections"], fields["predict_ms"]) == (640, 480, 5, 80.0)
    assert fields["gpu_memory_mb"] == 812.0 and "_aws" not in fields  # embedded metrics only with a namespace
    refused = json.loads(telemetry.log_line(REFUSED, "detector", "1.0"))
    assert (refused["outcome"], refused["server_errors"], refused["width"]) == ("not_an_image", 0, None)


def test_with_a_namespace_the_line_is_cloudwatch_embedded_metric_format():
    fields = json.loads(telemetry.log_line(SERVED, "detector", "1.0", "objdetect", {"gpu_memory_mb": 812.0}))
    directives = fields["_aws"]["CloudWatchMetrics"]
    timestamp = fields["_aws"]["Timestamp"]  # epoch milliseconds, as CloudWatch requires
    assert isinstance(timestamp, int) and abs(timestamp - time.time() * 1000) < 5000
    for directive in directives:  # what CloudWatch requires of each: its members exist, numbers and strings
        assert directive["Namespace"] == "objdetect"
        for dimension_set in directive["Dimensions"]:
            assert all(isinstance(fields[name], str) for name in dimension_set)
        for metric in directive["Metrics"]:
            assert isinstance(fields[metric["Name"]], (int, float)), metric
    per_model = {metric["Name"] for metric in directives[0]["Metrics"]}
    assert {"requests", "server_errors", "predict_ms", "total_ms", "gpu_memory_mb", "detections"} <= per_model
    assert directives[1]["Dimensions"] == [["model", "outcome"]]
    refused = json.loads(telemetry.log_line(REFUSED, "detector", "1.0", "objdetect"))
    assert "detections" not in {m["Name"] for m in refused["_aws"]["CloudWatchMetrics"][0]["Metrics"]}  # null


def test_the_frontend_writes_json_lines_bare_and_drops_its_echo_of_metric_lines():
    config = ElementTree.parse(LOG_CONFIG).getroot()
    model_log = config.find(".//Logger[@name='MODEL_LOG']")
    assert model_log.get("additivity") == "false"
    routes = {ref.get("ref"): ref.find("RegexFilter") for ref in model_log.findall("AppenderRef")}
    bare = config.find(".//Console[@name='JSON_STDOUT']/PatternLayout").get("pattern")
    assert bare == "%m%n" and routes["JSON_STDOUT"].get("onMatch") == "ACCEPT"
    assert routes["STDOUT"].get("onMatch") == "DENY" and routes["STDOUT"].get("onMismatch") == "ACCEPT"
    json_line = re.compile(routes["JSON_STDOUT"].get("regex"))
    assert json_line.match(telemetry.log_line(SERVED, "detector", "1.0")) and not json_line.match("Torch worker started.")
    echo = config.find(".//Logger[@name='org.pytorch.serve.wlm.WorkerLifeCycle']/RegexFilter")
    assert re.match(echo.get("regex"), "result=[METRICS]objdetect_batch_size.Count:1|#model_name:d") and \
        echo.get("onMatch") == "DENY"


def test_the_pipeline_records_each_request_and_names_it_in_error_bodies(shapes_model, shapes_labels, exact_settings):
    detector = Detector(shapes_model, shapes_labels, exact_settings)
    image = synthetic.encode(synthetic.generate(synthetic.SAMPLE_SEED).image)
    good, bad = detector([Request({"body": image}, {}, "ts-1", "mine"), Request({"body": b"junk"}, {}, "ts-2")])
    assert good.record.request_id == "ts-1" and good.record.client_request_id == "mine"
    assert good.record.detections == 6 and good.record.batch_size == 1 and good.record.status == 200
    assert {"decode", "transform", "predict", "postprocess", "total"} <= set(good.record.timings_ms)
    assert json.loads(bad.body)["request_id"] == "ts-2" and "client_request_id" not in json.loads(bad.body)
    assert (bad.record.status, bad.record.error, bad.record.batch_size) == (400, "not_an_image", 0)


def test_gpu_readings_are_memory_and_nvml_utilization_when_there_is_nvml(monkeypatch):
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "utilization", lambda device: 42)
    assert gpu_readings(torch.device("cuda:0")) == {"gpu_memory_mb": 3072.0, "gpu_utilization_percent": 42.0}

    def no_nvml(device):
        raise ModuleNotFoundError("pynvml")

    monkeypatch.setattr(torch.cuda, "utilization", no_nvml)
    assert gpu_readings(torch.device("cuda:0")) == {"gpu_memory_mb": 3072.0}
    assert gpu_readings(torch.device("cpu")) == {}
