"""A real TorchServe: started and stopped for `make serve`, the tests and the benchmark, and as the
container's entrypoint and health check (scripts/server.py).

Each server gets its own temp dir (TorchServe keeps its pid file, logs and config snapshot
there, and allows one server per dir) and its own process group. Stopping signals the whole
group: a SIGTERM to TorchServe's launcher alone would orphan the Java server and its workers.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import psutil

from . import frontend
from .drain import TOKEN_ENV, DrainPolicy, drain, marker
from .java import JavaNotFound, java_environment
from .management import Management, ManagementError
from .paths import CONFIG_PROPERTIES, LOG_CONFIG, METRICS_CONFIG, MODEL_STORE
from .release import RELEASE_ENV, RELEASE_SHA256_ENV, ReleaseError, fetch, register

TORCHSERVE = Path(sys.executable).with_name("torchserve")
WORKER_PORTS = 32  # free ports kept after Ports.free()'s first worker port: workers started and restarted


class ServerError(RuntimeError):
    pass


@dataclass(frozen=True)
class Ports:
    """TorchServe's five listeners, and the first of its workers' ports. gRPC cannot be switched off
    in TorchServe 0.12, so it gets ports too (on loopback, like management), or a second server on
    the machine fails to bind. The frontend reaches its workers over loopback TCP (Debian's Netty has
    no native epoll for Unix sockets: docs/security.md), each worker it starts on the next port from
    `workers`, so servers side by side need their own."""

    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071
    workers: int = 9000

    @classmethod
    def free(cls) -> "Ports":
        return cls(*(free_port(WORKER_PORTS if f.name == "workers" else 1) for f in fields(cls)))

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        for f in fields(Ports):
            parser.add_argument(f"--{f.name.replace('_', '-')}-port", type=int, default=f.default)

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> "Ports":
        return cls(*(getattr(args, f"{f.name}_port") for f in fields(cls)))


class TorchServe:
    def __init__(self, model_store: Path, models: dict[str, str], ports: Ports = Ports(),
                 config: Path = CONFIG_PROPERTIES, env: dict[str, str] | None = None, log_dir: Path | None = None,
                 console: bool = False):
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
        self.drain_token = secrets.token_urlsafe(24)  # what makes a request a stop request (objdetect/drain.py)
        # /ping answers from the serving and drain markers (run_until_signal sets this: it writes
        # them); otherwise it is TorchServe's own, Healthy while workers load.
        self.ready_ping = False

    def url(self, api: str = "inference") -> str:
        return f"http://127.0.0.1:{getattr(self.ports, api)}"

    @property
    def log_dir(self) -> Path:
        return self._log_dir or self.workdir / "logs"

    def start(self, ready_timeout_s: float = 180) -> "TorchServe":
        """Raises ServerError when TorchServe finds no Java runtime, exits, or does not answer
        with a READY worker for each of its models in time."""
        self.launch()
        try:
            self.wait_listening(ready_timeout_s)
            for name in self.models:
                self.wait_ready(name, ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def launch(self) -> "TorchServe":
        """Starts TorchServe and returns at once, before it listens (start() waits for its workers).
        Raises ServerError when it finds no Java runtime, or a frontend with TorchServe's bundled Netty."""
        try:
            java = java_environment({**os.environ, **self.env})
        except JavaNotFound as error:
            raise ServerError(str(error)) from None
        unsafe = frontend.problem(frontend.frontend_dir())
        if unsafe:
            raise ServerError(unsafe)
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
            **self.env,
            **java,
            TOKEN_ENV: self.drain_token,
        }
        for variable, path in ((frontend.SERVING_MARKER_ENV, serving_marker(self.ports.management)),
                               (frontend.DRAIN_MARKER_ENV, marker(self.ports.management))):
            env.pop(variable, None)  # never another server's, inherited
            if self.ready_ping:  # read by the frontend's /ping (HttpRequestHandler.java)
                env[variable] = str(path)
        command = [str(TORCHSERVE), "--start", "--foreground", "--ncs", "--ts-config", str(config),
                   "--log-config", str(LOG_CONFIG), "--model-store", str(self.model_store)]
        if self.models:  # none: models are registered once it listens (a release)
            command += ["--models", *(f"{name}={archive}" for name, archive in self.models.items())]
        with open(self.workdir / "torchserve.out", "wb") as out:
            self.process = subprocess.Popen(command, cwd=self.workdir, env=env, stdout=None if self.console else out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_listening(self, timeout_s: float = 180) -> None:
        """Until the management API answers (models given at launch load after that)."""
        management = Management(self.url("management"), timeout_s=3)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"TorchServe exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                management.models()
                return
            except ManagementError:
                time.sleep(0.25)
        raise ServerError(f"TorchServe's management API did not answer within {timeout_s:.0f} s:\n{self.log_tail()}")

    def wait_ready(self, model: str, timeout_s: float = 180) -> None:
        """Until the model has a READY worker (TorchServe's /ping says Healthy before workers load)."""
        management = Management(self.url("management"), timeout_s=3)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"TorchServe exited with {self.process.returncode}:\n{self.log_tail()}")
            if management.ready(model):
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

    def drain(self, policy: DrainPolicy, log=print) -> None:
        """Fails the health check, answers every request accepted so far, refuses later ones with a
        JSON 503 until `policy.grace_s` after the call (objdetect_serving/drain.py); then stop()."""
        marker(self.ports.management).touch()
        drain(self.url(), self.url("management"), self.drain_token, policy, log)

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
        """The repository's config.properties, with this server's ports and our metrics declared."""
        text = f"{self.config.read_text()}\nmetrics_config={METRICS_CONFIG}\n"
        for f in fields(self.ports):
            port = getattr(self.ports, f.name)
            if f.name == "workers":
                pattern, replacement = r"^initial_worker_port=\d+", f"initial_worker_port={port}"
            elif f.name.startswith("grpc"):
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


def run_until_signal(server: TorchServe, name: str, on_ready: Callable[[], None] = lambda: None,
                     drain_policy: DrainPolicy = DrainPolicy(), prepare: Callable[[], None] = lambda: None) -> int:
    """Starts `server`, calls `prepare` (a ServerError there stops it), marks it serving for the
    health check, calls `on_ready`, and serves until SIGTERM (drained first: TorchServe.drain) or
    SIGINT (a person's Ctrl-C: stopped at once); then stops the whole process group. Returns an
    exit status: 0 when stopped by a signal."""
    received = {}

    def on_signal(signum, _frame):
        received["signal"] = signum
        raise KeyboardInterrupt

    for leftover in (marker(server.ports.management), serving_marker(server.ports.management)):
        leftover.unlink(missing_ok=True)  # a previous server's, killed
    server.ready_ping = True  # the load balancer's /ping then says Healthy only between the markers
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"{name}: starting TorchServe", flush=True)
        server.start()
        print(f"{name}: TorchServe logs are in {server.log_dir}", flush=True)
        prepare()
        serving_marker(server.ports.management).touch()
        on_ready()
        server.process.wait()
        print(f"{name}: TorchServe exited by itself ({server.process.returncode}):\n{server.log_tail()}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        signum = received.get("signal", signal.SIGINT)
        if signum == signal.SIGTERM and server.process is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM changes nothing; Ctrl-C cuts it short
            print(f"{name}: SIGTERM: draining (grace {drain_policy.grace_s:g} s, at most {drain_policy.timeout_s:g} s)",
                  flush=True)
            try:
                server.drain(drain_policy, lambda line: print(f"{name}: {line}", flush=True))
            except KeyboardInterrupt:
                print(f"{name}: SIGINT: drain cut short", flush=True)
        print(f"{name}: {signal.Signals(signum).name}: stopping TorchServe", flush=True)
        return 0
    except ServerError as error:
        print(f"{name}: {error}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.stop()
        server.cleanup()
        marker(server.ports.management).unlink(missing_ok=True)
        serving_marker(server.ports.management).unlink(missing_ok=True)
        print(f"{name}: stopped; no TorchServe process is left", flush=True)


def serving_marker(management_port: int) -> Path:
    """The file that says the server on `management_port` serves all it was started for (every
    version of its release registered, every default set): until then the health check fails,
    though a first version may already be READY."""
    return Path(tempfile.gettempdir()) / f"objdetect-serving-{management_port}"


def _group_alive(group: int) -> bool:
    """Whether a process of the group still runs (zombies awaiting their parent do not count)."""
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == group and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except ProcessLookupError:
            continue
    return False


def free_port(run: int = 1) -> int:
    """A free port on 127.0.0.1, and the `run - 1` ports after it free too."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            first = sock.getsockname()[1]
        if first + run <= 65536 and all(_bindable(port) for port in range(first + 1, first + run)):
            return first


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def main(argv: list[str] | None = None) -> int:
    """The container's entrypoint (serve until SIGTERM) and health check (--check NAME)."""
    parser = argparse.ArgumentParser(description="Serve model archives with TorchServe until SIGTERM, "
                                     "or check that a model has a READY worker (the health check).")
    parser.add_argument("--model-store", type=Path, default=MODEL_STORE)
    parser.add_argument("--models", nargs="+", default=["detector=detector-v1.0.mar"], metavar="NAME=ARCHIVE",
                        help="the archives in --model-store to serve when no release is given")
    parser.add_argument("--release", default=os.environ.get(RELEASE_ENV) or None, metavar="S3_URI",
                        help=f"serve this release from the model store instead (default ${RELEASE_ENV}): "
                             "objdetect_serving/release.py")
    parser.add_argument("--release-sha256", default=os.environ.get(RELEASE_SHA256_ENV), metavar="HEX",
                        help=f"the release manifest's SHA-256 (default ${RELEASE_SHA256_ENV})")
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "objdetect-release",
                        help="where a release's archives are downloaded (default %(default)s)")
    Ports.add_arguments(parser)
    DrainPolicy.add_arguments(parser)
    parser.add_argument("--check", metavar="NAME",
                        help="exit 0 when the server serves all it was started for, model NAME has a READY "
                             "worker and the server is not draining, else 1")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.check, args.management_port)
    ports = Ports.from_arguments(args)
    if not args.release:
        models = dict(pair.split("=", 1) for pair in args.models)
        server = TorchServe(args.model_store, models, ports, console=True)
        return run_until_signal(server, "objdetect", lambda: print(f"objdetect: {', '.join(models)} READY", flush=True),
                                DrainPolicy.from_arguments(args))
    try:  # before TorchServe starts: a release that cannot be served whole is not served at all
        release, archives = fetch(args.release, args.release_sha256, args.scratch)
    except ReleaseError as error:
        print(f"objdetect: {error}", file=sys.stderr, flush=True)
        return 1
    print(f"objdetect: release {release.release_id} verified: {release.summary()}", flush=True)
    server = TorchServe(args.scratch, {}, ports, console=True)

    def register_release() -> None:
        try:
            register(release, archives, Management(server.url("management")),
                     lambda line: print(f"objdetect: {line}", flush=True))
        except ReleaseError as error:
            raise ServerError(str(error)) from None

    return run_until_signal(server, "objdetect",
                            lambda: print(f"objdetect: release {release.release_id} READY: {release.summary()}", flush=True),
                            DrainPolicy.from_arguments(args), prepare=register_release)


def check(name: str, management_port: int) -> int:
    """The health check: 0 when the server serves what it was started for and `name` is READY."""
    if marker(management_port).exists():
        print("draining: shutting down after SIGTERM")
        return 1
    if not serving_marker(management_port).exists():
        print("starting: not every model of the server is registered yet")
        return 1
    return 0 if Management(f"http://127.0.0.1:{management_port}", timeout_s=3).ready(name) else 1
