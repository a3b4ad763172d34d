"""The worker's malloc keeps freed memory mapped: a request does not fault its pages back in."""

import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests

from objdetect import registry, synthetic
from objdetect_serving.archive import build_mar
from objdetect_serving.torchserve import Ports, TorchServe
from objdetect_tools.workloads import photo

pytestmark = pytest.mark.integration

# A forward pass in miniature, in a fresh process (malloc's thresholds are process-wide and adapt to
# its history): ten 3 MB blocks taken, written and freed, twenty times over; minor page faults each.
# The child is this interpreter, where the project is installed: it imports objdetect as the tests do.
REQUESTS = """
import resource, sys
from objdetect.allocator import keep_freed_memory

applied = keep_freed_memory() if sys.argv[1] == "kept" else False

def request():
    blocks = [bytearray(3 * 2**20) for _ in range(10)]
    del blocks

request()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    request()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_request(mode: str) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", REQUESTS, mode], capture_output=True, text=True, check=True).stdout
    applied, faults = out.split()
    return applied == "True", float(faults)


def test_kept_freed_memory_is_reused_where_glibcs_defaults_fault_it_back_in():
    applied, kept = _faults_per_request("kept")
    _, default = _faults_per_request("default")
    assert applied
    assert default > 5000  # 30 MB a request given back to the kernel and faulted in again, 4 KiB a fault
    assert kept < 50


def _minor_faults(process: psutil.Process) -> int:
    return int(Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def test_a_served_request_faults_no_pages_once_the_worker_is_warm(tmp_path):
    """Our worker sets its malloc at start. Without, glibc's thresholds adapted to the larger images
    seen first, and each 640x480 request after them faulted ~2,000 pages back in."""
    build_mar(registry.EMBEDDED, tmp_path, "detector", "1.0")
    larger, image = synthetic.encode(synthetic.generate(synthetic.SAMPLE_SEED).image), photo(640, 480, 5, "JPEG").data
    with TorchServe(tmp_path, {"detector": "detector-v1.0.mar"}, Ports.free()) as server:
        worker = next(p for p in psutil.Process(server.process.pid).children(recursive=True)
                      if "model_service_worker" in " ".join(p.cmdline()))
        url = f"{server.url()}/predictions/detector"
        for data in [larger] * 5 + [image] * 5:
            requests.post(url, data=data, timeout=60).raise_for_status()
        before = _minor_faults(worker)
        for _ in range(20):
            requests.post(url, data=image, timeout=60).raise_for_status()
        faults = (_minor_faults(worker) - before) / 20
        log = (server.log_dir / "model_log.log").read_text()
    assert faults < 250, f"{faults} minor page faults a request"  # a Python heap's growth, not a pass's pages
    assert "freed memory kept" in log
