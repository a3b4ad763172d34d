"""Load tests: a short real locust run, whose report must hold what the server saw, and answers that
must count as failures: an error status, our keys missing, the wrong image size."""

import contextlib
import csv
import http.server
import itertools
import json
import os
import subprocess
import sys
import threading

import pytest

from objdetect_serving.paths import ROOT
from objdetect_tools import loadtest

PNG = b"\x89PNG\r\n\x1a\n"


def run(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "loadtest.py"), *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.integration
@pytest.mark.slow
def test_a_short_run_reports_the_requests_the_server_answered(server, tmp_path):
    access_log = server.log_dir / "access_log.log"  # TorchServe's own record: a line per request
    offset = access_log.stat().st_size
    out = tmp_path / "report"
    result = run("--host", server.url(), "--metrics-url", f"{server.url('metrics')}/metrics", "--users", "2",
                 "--spawn-rate", "2", "--duration", "10s", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    with open(access_log, "rb") as file:
        file.seek(offset)
        served = [line for line in file.read().decode().splitlines() if '"POST /predictions/detector ' in line]
    with open(out / "locust_stats.csv") as file:
        aggregated = next(row for row in csv.DictReader(file) if row["Name"] == "Aggregated")
    summary = json.loads((out / "summary.json").read_text())
    # Every request locust counted was answered 200 by the server; a few per user may land while
    # locust winds down, after its final statistics (seen: up to 3 per user).
    assert summary["requests"] <= len(served) <= summary["requests"] + 4 * 2
    assert all('" 200 ' in line for line in served)
    assert summary["requests"] == int(aggregated["Request Count"]) > 5
    assert summary["failures"] == int(aggregated["Failure Count"]) == 0
    assert summary["throughput_rps"] == pytest.approx(float(aggregated["Requests/s"]), abs=1e-3)
    for key, column in (("p50_ms", "50%"), ("p90_ms", "90%"), ("p99_ms", "99%")):
        assert summary[key] == float(aggregated[column])
    # Every request type of the mix was sent and validated.
    assert set(summary["per_request_type"]) >= {"jpeg 640x480", "json b64 640x480"}
    # One line per successful answer; answers that land while locust winds down (after its final
    # statistics) may add a few, one or two per user.
    latencies = (out / "latencies.txt").read_text().split()
    assert 0 <= len(latencies) - (summary["requests"] - summary["failures"]) <= 6
    report = (out / "report.md").read_text()
    assert f"| {summary['requests']} | {summary['failures']} | {summary['throughput_rps']} |" in report
    for plot in ("over_time.png", "latency_distribution.png", "server_view.png"):
        assert (out / plot).read_bytes()[:8] == PNG
    # The server's view, from its metrics port: time queued and in each stage, per request.
    server_ms = summary["server_ms"]
    assert {"queue_ms", "decode_ms", "transform_ms", "predict_ms", "postprocess_ms"} <= set(server_ms)
    assert 0 < server_ms["predict_ms"] < summary["p99_ms"] and server_ms["queue_ms"] >= 0
    assert "The server's mean per request over the run" in report
    intervals = json.loads((out / "server_metrics.json").read_text())
    assert sum("predict_ms" in means for _, means in intervals) >= 3  # scraped every 2 s while locust sent
    assert (out / "locust.html").stat().st_size > 1000


@pytest.mark.integration
@pytest.mark.slow
def test_an_error_status_counts_as_a_failure(server, tmp_path):
    """The "guarded" model needs an API key: every answer is a 401, and locust must count failures."""
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "loadtest.py"), "--host", server.url(),
                             "--users", "1", "--duration", "4s", "--out", str(out)],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OBJDETECT_MODEL": "guarded"})
    assert (out / "summary.json").exists(), result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert result.returncode != 0
    assert summary["requests"] > 0 and summary["failures"] == summary["requests"]
    assert "HTTP 401" in failures_text(out) and "wrong answer" not in failures_text(out)


@contextlib.contextmanager
def wrong_answers():
    """A server answering every prediction 200, with JSON that is not our answer: by turns
    without our keys, and with our keys but a 1x1 image's size."""
    bodies = itertools.cycle([{"detections": []},
                              {"model": "detector", "version": "1.0", "width": 1, "height": 1, "detections": [],
                               "timings_ms": {}}])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps(next(bodies)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{host.server_port}"
    finally:
        host.shutdown()
        host.server_close()


def failures_text(out) -> str:
    """Every failure locust recorded, with our locustfile's message, in one string."""
    with open(out / "locust_failures.csv") as file:
        return " ".join(row["Error"] for row in csv.DictReader(file))


@pytest.mark.integration
@pytest.mark.slow
def test_a_200_with_the_wrong_answer_counts_as_a_failure(tmp_path):
    out = tmp_path / "report"
    with wrong_answers() as host:
        result = run("--host", host, "--users", "1", "--duration", "4s", "--out", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert result.returncode != 0
    assert summary["requests"] > 1 and summary["failures"] == summary["requests"]
    assert "not our answer's keys" in failures_text(out) and "answered size 1x1" in failures_text(out)


@pytest.mark.integration
@pytest.mark.slow
def test_soak_records_server_memory_of_a_local_server(tmp_path):
    out = tmp_path / "soak"
    # 12 s is all warm-up (a new server's memory climbs for its first ~40 s), so nothing is judged.
    result = run("--users", "2", "--spawn-rate", "2", "--duration", "12s", "--soak", "--rate", "2", "--warmup-s", "60",
                 "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    samples = (out / "memory.csv").read_text().splitlines()[1:]
    assert len(samples) >= 3 and all(float(line.split(",")[1]) > 100 for line in samples)  # MB of a real server
    assert (out / "memory.png").read_bytes()[:8] == PNG
    assert json.loads((out / "summary.json").read_text())["memory"] == {
        "samples": 0, "verdict": "too few samples after the warm-up to judge"}


@pytest.mark.unit
@pytest.mark.parametrize("megabytes, verdict", [
    ([1000] * 10 + [1002] * 10, "stable"),
    ([1000 + 20 * i for i in range(20)], "GROWING"),
])
def test_memory_growth_is_flagged(megabytes, verdict):
    assert loadtest.memory_verdict(list(enumerate(megabytes)))["verdict"] == verdict


@pytest.mark.unit
def test_growth_during_the_warm_up_is_not_judged():
    warming_then_flat = [(t, 1000 + 25 * t) for t in range(10)] + [(t, 1250) for t in range(10, 30)]
    assert loadtest.memory_verdict(warming_then_flat)["verdict"] == "GROWING"
    judged = loadtest.memory_verdict(warming_then_flat, warmup_s=10)
    assert judged["verdict"] == "stable" and judged["samples"] == 20
    assert loadtest.memory_verdict(warming_then_flat, warmup_s=25)["verdict"].startswith("too few")


@pytest.mark.unit
def test_server_means_are_per_request_between_two_scrapes():
    before = {"queue_us": 1_000, "requests": 10, "predict_sum": 1.0, "predict_count": 10, "decode_sum": 0.1,
              "decode_count": 10}
    after = {"queue_us": 41_000, "requests": 30, "predict_sum": 2.6, "predict_count": 30, "decode_sum": 0.1,
             "decode_count": 10, "fetch_sum": 0.05, "fetch_count": 1}
    assert loadtest.server_means(before, after) == {"queue_ms": 2.0, "predict_ms": 80.0, "fetch_ms": 50.0}
    assert loadtest.server_means(after, after) == {}  # nothing answered in between: no means


@pytest.mark.unit
def test_a_scrape_before_the_first_answer_has_no_queue_mean():
    # What CI once scraped: the first request had arrived (counted) but not been answered (no queue time).
    first_arrived = {"requests": 1, "memory_mb": 900.0}
    assert loadtest.server_means({"memory_mb": 900.0}, first_arrived) == {}
    answered = {"queue_us": 3_000, "requests": 3, "predict_sum": 0.24, "predict_count": 3}
    assert loadtest.server_means(first_arrived, answered) == {"queue_ms": 1.5, "predict_ms": 80.0}
