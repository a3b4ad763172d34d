"""`make serve` end to end: it serves, its printed curl example works, and a signal leaves nothing behind."""

import contextlib
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from objdetect_serving.paths import ROOT
from objdetect_serving.torchserve import Ports

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def processes_in(workdir: str) -> list[psutil.Process]:
    """TorchServe's launcher, Java server and workers all inherit TEMP=<its temp dir>."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("TEMP") == workdir:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return [p for p in found if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def descendants(pid: int) -> set[psutil.Process]:
    """Every process below `pid` now: what a failing test must kill, since TorchServe leads its own
    session and would outlive a kill of make's process group."""
    try:
        return set(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return set()


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_make_serve_serves_then_stops_cleanly(stop):
    ports = Ports.free()
    make = subprocess.Popen(
        ["make", "--no-print-directory", "serve", f"INFERENCE_PORT={ports.inference}",
         f"MANAGEMENT_PORT={ports.management}", f"METRICS_PORT={ports.metrics}",
         f"GRPC_INFERENCE_PORT={ports.grpc_inference}", f"GRPC_MANAGEMENT_PORT={ports.grpc_management}",
         f"WORKERS_PORT={ports.workers}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own group, as a terminal's foreground job is
    )
    output, workdir, started = [], None, set()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = make.stdout.readline()
            started |= descendants(make.pid)  # TorchServe's own session hides it from make's group
            if not line:
                break
            output.append(line)
            if "is READY" in line:
                break
        text = "".join(output)
        assert "is READY" in text, text
        assert re.search(r"serve: serving \w+: \S", text)  # which model, and why
        curl = next(line.strip() for line in make.stdout if line.strip().startswith("curl -T"))
        workdir = str(Path(shlex.split(curl)[2]).parent)
        assert processes_in(workdir)

        answer = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=60)
        assert answer.returncode == 0 and '"detections": [{"label": ' in answer.stdout

        if stop == "ctrl-c":
            os.killpg(make.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        else:
            make.send_signal(signal.SIGTERM)  # what `kill <pid of make>` does
        rest = make.stdout.read()
        make.wait(timeout=90)
        assert "no TorchServe process is left" in rest, rest
        deadline = time.monotonic() + 10
        while processes_in(workdir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_in(workdir) == []
        assert re.search(r"serve: SIG(INT|TERM): stopping TorchServe", rest)
    finally:
        started |= descendants(make.pid)
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
        for leftover in [*started, *(processes_in(workdir) if workdir else [])]:
            with contextlib.suppress(psutil.Error):
                leftover.kill()
