"""`make serve` end to end: it serves, its printed curl example works, and a signal leaves nothing behind.
And what it installs first, read from `make -n` (a dry run: make only prints the commands): the
serving venv without the dev extra, which `make setup`, `make test` and the other tools add."""

import contextlib
import json
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

pytestmark = pytest.mark.integration  # make runs as a subprocess


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


def check_the_readme_quickstart(port: int, tmp_path: Path) -> None:
    """The README's quickstart client command, as written there, against this server: a JSON line
    and an annotated JPEG for every sample photo."""
    readme = (ROOT / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith(".venv/bin/objdetect-client detect"))
    command = shlex.split(line, comments=True)
    command[command.index("--render") + 1] = str(tmp_path / "out")
    samples = sorted((ROOT / command[2]).glob("*.jpg"))
    assert len(samples) >= 2
    run = subprocess.run(command + ["--endpoint", f"127.0.0.1:{port}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert sorted(line["source"] for line in lines) == [str(p.relative_to(ROOT)) for p in samples]
    assert all(line["model"] == "detector" and isinstance(line["detections"], list) for line in lines)
    rendered = sorted((tmp_path / "out").iterdir())
    assert len(rendered) == len(samples) and all(p.read_bytes()[:2] == b"\xff\xd8" for p in rendered)


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_make_serve_serves_then_stops_cleanly(stop, tmp_path):
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
            check_the_readme_quickstart(ports.inference, tmp_path)

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


SERVING_TARGETS = ("serve", "mar", "image")
DEV_TARGETS = ("setup", "test", "test-unit", "fuzz", "loadtest", "soak", "bench", "cold-start", "image-test",
               "validate-terraform", "train-embedded", "gpu-check")
INSTALL = re.compile(r"pip install .*-e '\.\[(?P<extras>[^\]]*)\]'")


def dry_run(target: str, venv: Path) -> list[str]:
    """The commands `make <target>` would run with its venvs in `venv`'s folder (the checkout's own
    .venv untouched): make -n prints them and runs none (no recipe line here is a sub-make)."""
    done = subprocess.run(["make", "--no-print-directory", "-n", target, f"VENV={venv}",
                           f"CHECKOV_VENV={venv.parent / 'checkov'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def installs(commands: list[str]) -> list[set[str]]:
    """The extras of each `pip install -e .[...]` of the project, in order."""
    return [set(match["extras"].split(",")) for line in commands if (match := INSTALL.search(line))]


def frontend_installed_after_the_last_pip_install(commands: list[str]) -> bool:
    last_pip = max(i for i, line in enumerate(commands) if INSTALL.search(line))
    return any("objdetect_serving.frontend install" in line for line in commands[last_pip + 1:])


@pytest.fixture()
def venv(tmp_path) -> Path:
    return tmp_path / "venv"


def test_from_a_clean_checkout_serving_installs_no_dev_extra(venv):
    for target in SERVING_TARGETS:
        commands = dry_run(target, venv)
        assert installs(commands) == [{"openvino", "java", "client"}], (target, commands)
        assert frontend_installed_after_the_last_pip_install(commands), (target, commands)
    assert any("scripts/serve.py" in line for line in dry_run("serve", venv))


def test_from_a_clean_checkout_setup_test_and_the_tools_install_the_dev_extra(venv):
    for target in DEV_TARGETS:
        commands = dry_run(target, venv)
        assert [extras for extras in installs(commands) if "dev" in extras] == \
            [{"dev", "openvino", "java", "client"}], (target, commands)
        assert frontend_installed_after_the_last_pip_install(commands), (target, commands)
    test = dry_run("test", venv)
    assert test[-1].endswith("-m pytest") and any("checkov" in line for line in test)


def test_installs_are_redone_when_pyproject_changes_and_only_then(venv):
    venv.mkdir()
    serving, dev = venv / ".installed", venv / ".installed-dev"
    checkov = venv.parent / "checkov" / "bin" / "checkov"
    checkov.parent.mkdir(parents=True)
    for marker in (serving, dev, checkov):
        marker.touch()
    assert installs(dry_run("serve", venv)) == [] and installs(dry_run("test", venv)) == []

    dev.unlink()  # a venv set up for serving only: serving stays as it is, the tests add the dev extra
    assert installs(dry_run("serve", venv)) == []
    assert installs(dry_run("test", venv)) == [{"dev", "openvino", "java", "client"}]

    dev.touch()
    edited = (ROOT / "pyproject.toml").stat().st_mtime
    for marker in (serving, dev):  # installed before pyproject.toml's last change
        os.utime(marker, (edited - 60, edited - 60))
    assert installs(dry_run("serve", venv)) == [{"openvino", "java", "client"}]
    assert installs(dry_run("test", venv)) == [{"openvino", "java", "client"}, {"dev", "openvino", "java", "client"}]
