"""Load tests: a short real locust run, whose report must hold what locust measured."""

import csv
import json
import os
import subprocess
import sys

import pytest

from objdetect_serving.paths import ROOT
from objdetect_tools import loadtest

PNG = b"\x89PNG\r\n\x1a\n"


def run(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "loadtest.py"), *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.integration
@pytest.mark.slow
def test_a_short_run_writes_the_numbers_locust_measured(server, tmp_path):
    out = tmp_path / "report"
    result = run("--host", server.url(), "--users", "2", "--spawn-rate", "2", "--duration", "10s", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    with open(out / "locust_stats.csv") as file:
        aggregated = next(row for row in csv.DictReader(file) if row["Name"] == "Aggregated")
    summary = json.loads((out / "summary.json").read_text())
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
    for plot in ("over_time.png", "latency_distribution.png"):
        assert (out / plot).read_bytes()[:8] == PNG
    assert (out / "locust.html").stat().st_size > 1000


@pytest.mark.integration
@pytest.mark.slow
def test_a_wrong_answer_counts_as_a_failure(server, tmp_path):
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


@pytest.mark.integration
@pytest.mark.slow
def test_soak_records_server_memory_of_a_local_server(tmp_path):
    out = tmp_path / "soak"
    result = run("--users", "2", "--spawn-rate", "2", "--duration", "12s", "--soak", "--rate", "2", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    samples = (out / "memory.csv").read_text().splitlines()[1:]
    assert len(samples) >= 3 and all(float(line.split(",")[1]) > 100 for line in samples)  # MB of a real server
    assert (out / "memory.png").read_bytes()[:8] == PNG
    assert "memory" in json.loads((out / "summary.json").read_text())


@pytest.mark.unit
@pytest.mark.parametrize("megabytes, verdict", [
    ([1000] * 10 + [1002] * 10, "stable"),
    ([1000 + 20 * i for i in range(20)], "GROWING"),
])
def test_memory_growth_is_flagged(megabytes, verdict):
    assert loadtest.memory_verdict(list(enumerate(megabytes)))["verdict"] == verdict
