"""Start and stop a real TorchServe: used by `make serve`, the tests, and as the container's entrypoint.

    python scripts/server.py --model-store DIR --models detector=detector-v1.0.mar   # serve until SIGTERM
    python scripts/server.py --check detector                                        # health: a READY worker?

Each server gets its own temp dir (TorchServe keeps its pid file, logs and config snapshot
there, and allows one server per dir) and its own process group. Stopping signals the whole
group: a SIGTERM to TorchServe's launcher alone would orphan the Java server and its workers.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config.properties"
TORCHSERVE = Path(sys.executable).with_name("torchserve")


class ServerError(RuntimeError):
    pass


@dataclass(frozen=True)
class Ports:
    """TorchServe's five listeners. gRPC cannot be switched off in TorchServe 0.12, so it gets
    ports too (on loopback, like management), or a second server on the machine fails to bind."""

    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071

    @classmethod
    def free(cls) -> "Ports":
        return cls(*(free_port() for _ in fields(cls)))

    def cli_args(self) -> list[str]:
        return [arg for f in fields(self) for arg in (f"--{f.name.replace('_', '-')}-port", str(getattr(self, f.name)))]


class TorchServe:
    def __init__(self, model_store: Path, models: dict[str, str], ports: Ports = Ports(), config: Path = CONFIG,
                 env: dict[str, str] | None = None, log_dir: Path | None = None, console: bool = False):
        """`models` maps model names to archive file names in `model_store`; logs go to `log_dir`
        (default: the server's temp dir, removed by cleanup), and to our stdout when `console`."""
        self.model_store = Path(model_store).resolve()
        self.models = models
        self.ports = ports
        self.config = config
        self.env = env or {}
        self._log_dir = log_dir
        self.console = console
        self.workdir: Path | None = None
        self.process: subprocess.Popen | None = None

    def url(self, api: str = "inference") -> str:
        return f"http://127.0.0.1:{getattr(self.ports, api)}"

    @property
    def log_dir(self) -> Path:
        return self._log_dir or self.workdir / "logs"

    def start(self, ready_timeout_s: float = 180) -> "TorchServe":
        self.workdir = Path(tempfile.mkdtemp(prefix="objdetect-torchserve-"))
        config = self.workdir / "config.properties"
        config.write_text(self._config_text())
        env = {
            **os.environ,
            # The pid file lives in Python's temp dir (TMPDIR first, then TEMP): one per server.
            "TMPDIR": str(self.workdir),
            "TEMP": str(self.workdir),
            "LOG_LOCATION": str(self.log_dir),
            "METRICS_LOCATION": str(self.log_dir),
            "TS_DECODE_INPUT_REQUEST": "false",  # hand request bodies to the handler as bytes; it parses JSON itself
            **self.env,
        }
        command = [str(TORCHSERVE), "--start", "--foreground", "--ncs", "--ts-config", str(config),
                   "--model-store", str(self.model_store),
                   "--models", *(f"{name}={archive}" for name, archive in self.models.items())]
        with open(self.workdir / "torchserve.out", "wb") as out:
            self.process = subprocess.Popen(command, cwd=self.workdir, env=env, stdout=None if self.console else out,
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
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"TorchServe exited with {self.process.returncode}:\n{self.log_tail()}")
            if check_ready(model + (f"/{version}" if version else ""), self.url("management")):
                return
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
        for f in fields(self.ports):
            port = getattr(self.ports, f.name)
            if f.name.startswith("grpc"):
                pattern, replacement = rf"^{f.name}_port=\d+", f"{f.name}_port={port}"
            else:
                pattern, replacement = rf"^({f.name}_address=http://[^:\s]+):\d+", rf"\g<1>:{port}"
            text, count = re.subn(pattern, replacement, text, flags=re.M)
            if count != 1:
                raise ServerError(f"{self.config} has no single line for the {f.name} port")
        return text

    def __enter__(self) -> "TorchServe":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.cleanup()


def run_until_signal(server: TorchServe, name: str, on_ready=lambda: None) -> int:
    """Starts `server`, calls `on_ready`, and serves until SIGINT or SIGTERM; then stops the whole
    process group. Returns an exit status: 0 when stopped by a signal."""
    received = {}

    def on_signal(signum, _frame):
        received["signal"] = signum
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"{name}: starting TorchServe", flush=True)
        server.start()
        print(f"{name}: TorchServe logs are in {server.log_dir}", flush=True)
        on_ready()
        server.process.wait()
        print(f"{name}: TorchServe exited by itself ({server.process.returncode}):\n{server.log_tail()}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: {signal.Signals(received.get('signal', signal.SIGINT)).name}: stopping TorchServe", flush=True)
        return 0
    except ServerError as error:
        print(f"{name}: {error}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.stop()
        server.cleanup()
        print(f"{name}: stopped; no TorchServe process is left", flush=True)


def check_ready(model: str, management_url: str) -> bool:
    try:
        described = requests.get(f"{management_url}/models/{model}", timeout=3)
        return described.ok and any(w.get("status") == "READY" for m in described.json() for w in m.get("workers", []))
    except (requests.RequestException, ValueError):
        return False


def _group_alive(group: int) -> bool:
    """Whether a process of the group still runs (zombies awaiting their parent do not count)."""
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == group and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except ProcessLookupError:
            continue
    return False


def add_port_arguments(parser: argparse.ArgumentParser) -> None:
    for f in fields(Ports):
        parser.add_argument(f"--{f.name.replace('_', '-')}-port", type=int, default=f.default)


def ports_from(args: argparse.Namespace) -> Ports:
    return Ports(*(getattr(args, f"{f.name}_port") for f in fields(Ports)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--models", nargs="+", default=["detector=detector-v1.0.mar"], metavar="NAME=ARCHIVE")
    add_port_arguments(parser)
    parser.add_argument("--check", metavar="NAME", help="exit 0 when model NAME has a READY worker, else 1")
    args = parser.parse_args()
    if args.check:
        return 0 if check_ready(args.check, f"http://127.0.0.1:{args.management_port}") else 1
    models = dict(pair.split("=", 1) for pair in args.models)
    server = TorchServe(args.model_store, models, ports_from(args), console=True)
    return run_until_signal(server, "objdetect", lambda: print(f"objdetect: {', '.join(models)} READY", flush=True))


if __name__ == "__main__":
    sys.exit(main())
