"""Start and stop a real TorchServe: used by `make serve`, the tests and the benchmarks.

Each server gets its own temp dir (TorchServe keeps its pid file, logs and config snapshot
there, and allows one server per dir) and its own process group. Stopping signals the whole
group: a SIGTERM to TorchServe's launcher alone would orphan the Java server and its workers.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config.properties"
TORCHSERVE = Path(sys.executable).with_name("torchserve")


class ServerError(RuntimeError):
    pass


class TorchServe:
    def __init__(self, model_store: Path, models: dict[str, str], inference_port: int = 8080,
                 management_port: int = 8081, metrics_port: int = 8082, config: Path = CONFIG,
                 env: dict[str, str] | None = None, log_dir: Path | None = None):
        """`models` maps model names to archive file names in `model_store`; logs go to `log_dir`
        (default: the server's temp dir, removed by cleanup)."""
        self.model_store = Path(model_store).resolve()
        self.models = models
        self.ports = {"inference": inference_port, "management": management_port, "metrics": metrics_port}
        self.config = config
        self.env = env or {}
        self._log_dir = log_dir
        self.workdir: Path | None = None
        self.process: subprocess.Popen | None = None

    def url(self, api: str = "inference") -> str:
        return f"http://127.0.0.1:{self.ports[api]}"

    @property
    def log_dir(self) -> Path:
        return self._log_dir or self.workdir / "logs"

    def start(self, ready_timeout_s: float = 180) -> "TorchServe":
        self.workdir = Path(tempfile.mkdtemp(prefix="objdetect-torchserve-"))
        config = self.workdir / "config.properties"
        config.write_text(self._config_text())
        env = {
            **os.environ,
            "TEMP": str(self.workdir),  # pid file; `torchserve --stop` would need the same TEMP
            "LOG_LOCATION": str(self.log_dir),
            "METRICS_LOCATION": str(self.log_dir),
            "TS_DECODE_INPUT_REQUEST": "false",  # hand request bodies to the handler as bytes; it parses JSON itself
            **self.env,
        }
        command = [str(TORCHSERVE), "--start", "--foreground", "--ncs", "--ts-config", str(config),
                   "--model-store", str(self.model_store),
                   "--models", *(f"{name}={archive}" for name, archive in self.models.items())]
        with open(self.workdir / "torchserve.out", "wb") as out:
            self.process = subprocess.Popen(command, cwd=self.workdir, env=env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            for name in self.models:
                self.wait_ready(name, ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, model: str, timeout_s: float = 180, version: str | None = None) -> None:
        """TorchServe's /ping says Healthy before workers load; a READY worker is what serves."""
        deadline = time.monotonic() + timeout_s
        path = f"{self.url('management')}/models/{model}" + (f"/{version}" if version else "")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"TorchServe exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                described = requests.get(path, timeout=2)
                if described.ok and any(w.get("status") == "READY" for m in described.json() for w in m.get("workers", [])):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)
        raise ServerError(f"model {model} had no READY worker after {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM to the whole process group (launcher, Java, workers), SIGKILL to what outlives it."""
        if self.process is None:
            return
        group = self.process.pid  # start_new_session: the launcher leads its own group
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:  # the whole group is gone
                break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and _group_alive(group):
                self.process.poll()  # reap the launcher
                time.sleep(0.1)
            if not _group_alive(group):
                break
        self.process.wait()
        self.process = None

    def cleanup(self) -> None:
        """Removes the temp dir (logs included); call after stop when the logs are no longer needed."""
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 60) -> str:
        texts = []
        for path in (self.workdir / "torchserve.out", self.log_dir / "model_log.log", self.log_dir / "ts_log.log"):
            if path.exists():
                texts.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(texts)

    def _config_text(self) -> str:
        """The repository's config.properties, with this server's ports."""
        text = self.config.read_text()
        for api, port in self.ports.items():
            text, count = re.subn(rf"^({api}_address=http://[^:\s]+):\d+", rf"\g<1>:{port}", text, flags=re.M)
            if count != 1:
                raise ServerError(f"{self.config} has no single {api}_address line")
        return text

    def __enter__(self) -> "TorchServe":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.cleanup()


def _group_alive(group: int) -> bool:
    """Whether a process of the group still runs (zombies awaiting their parent do not count)."""
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == group and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except ProcessLookupError:
            continue
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
