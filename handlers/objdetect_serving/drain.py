"""A graceful shutdown of a running TorchServe, for the SIGTERM that ECS sends a task on every
deploy, scale-in and instance drain (after the load balancer has stopped routing to it and let its
requests finish: terraform/alb.tf, task.tf), and `make serve` on a plain SIGTERM.

1. The health check (`server.py --check`) reports unhealthy: the marker file it looks for exists.
2. Every worker of every loaded model version is sent stop requests (objdetect/drain.py) until it
   has answered one: then every request accepted before the signal has been answered, and the
   workers answer what still comes with a JSON 503 `shutting_down`.
3. Until `grace_s` after the signal the server stays up, so late requests get that 503 rather
   than a refused connection. Then the caller stops TorchServe.

All of it within `timeout_s`, which the task definition's stopTimeout leaves room for.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests

from .management import Management, ManagementError

# The protocol with the workers' side (objdetect/drain.py), spelled out in both: each model archive
# carries its own objdetect package, which the server must not import (the image has only this one
# on its path), and an archive built today must drain under a later server. tests/test_drain.py
# holds the two equal.
TOKEN_ENV = "OBJDETECT_DRAIN_TOKEN"
HEADER = "x-objdetect-drain"
PAUSE_S = 0.05  # between rounds of stop requests: a busy worker's answer is awaited, not polled hot
MANAGEMENT_TIMEOUT_S = 3.0  # per call: a slower answer is asked for again, until the deadline
RETRY_S = 0.2  # before asking a management API that failed again: a busy frontend is not hammered


@dataclass(frozen=True)
class DrainPolicy:
    grace_s: float = 5.0
    timeout_s: float = 30.0

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, environ=os.environ) -> None:
        """--drain-grace-s and --drain-timeout-s, defaulting to OBJDETECT_DRAIN_GRACE_S and
        OBJDETECT_DRAIN_TIMEOUT_S (how the task definition sets them), else the defaults above."""
        for name, default, meaning in (
                ("grace", DrainPolicy.grace_s, "after SIGTERM, late requests get a JSON 503 for this long"),
                ("timeout", DrainPolicy.timeout_s, "the drain stops waiting for busy workers after this long")):
            parser.add_argument(f"--drain-{name}-s", type=float, help=f"{meaning} (default {default:g})",
                                default=float(environ.get(f"OBJDETECT_DRAIN_{name.upper()}_S", default)))

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> "DrainPolicy":
        return cls(args.drain_grace_s, args.drain_timeout_s)


def marker(management_port: int) -> Path:
    """The file whose existence makes the health check of the server on `management_port` fail."""
    return Path(tempfile.gettempdir()) / f"objdetect-draining-{management_port}"


def drain(inference_url: str, management_url: str, token: str, policy: DrainPolicy, log=print) -> None:
    """Steps 2 and 3 above (the caller makes the marker first). Logs what it waited for."""
    started = time.monotonic()
    deadline = started + policy.timeout_s
    try:
        versions = _ask(management_url, deadline, lambda management: [
            (name, v["modelVersion"]) for name in management.models() for v in management.versions(name)])
    except ManagementError as error:
        log(f"drain: could not list the models before the deadline ({error}); stopping without draining")
        return
    with ThreadPoolExecutor(max(1, len(versions))) as pool:
        left = list(pool.map(lambda nv: _stop_workers(inference_url, management_url, *nv, token, deadline), versions))
    took = time.monotonic() - started
    for undone in filter(None, left):
        log(f"drain: {undone}; stopping anyway")
    if not any(left):
        log(f"drain: workers of {len(versions)} model versions stopped taking requests in {took:.1f} s")
    time.sleep(max(0.0, min(started + policy.grace_s, deadline) - time.monotonic()))


def _stop_workers(inference_url: str, management_url: str, name: str, version: str, token: str,
                  deadline: float) -> str | None:
    """Sends stop requests until each READY worker of the version has answered one; returns what
    is still undone when the deadline passes, else None. Workers are looked up each round: a worker
    that dies while draining is not waited for, and one that replaces it is stopped too."""
    url = f"{inference_url}/predictions/{name}/{version}"
    answered: set[int] = set()
    while True:
        try:
            pending = _ask(management_url, deadline, lambda management: _ready_workers(management, name, version))
        except ManagementError as error:
            return f"could not list the workers of {name} v{version} before the deadline ({error})"
        pending -= answered
        if not pending:
            return None
        if time.monotonic() >= deadline:
            return f"{name} v{version}: workers {sorted(pending)} still busy at the deadline"
        # As many at once as workers wait: each idle worker takes one; a busy worker's waits
        # in the queue until it is free (or an idle one takes it, and the next round resends).
        with ThreadPoolExecutor(len(pending)) as pool:
            answered.update(pid for pid in pool.map(lambda _: _stop(url, token, deadline), pending) if pid is not None)
        time.sleep(PAUSE_S)


def _stop(url: str, token: str, deadline: float) -> int | None:
    """One stop request; the pid of the worker that answered it, if one did. No shared session: a
    requests.Session is not safe to use from several threads at once."""
    try:
        response = requests.post(url, headers={HEADER: token}, timeout=max(0.1, deadline - time.monotonic()))
        return response.json()["pid"] if response.status_code == 200 else None
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return None  # the queue was full (503), or the worker died: the next round retries


def _ask(management_url: str, deadline: float, question):
    """question(Management)'s answer. A management error (a busy frontend's timeout) says nothing
    about the workers, so the question is asked again after a pause until the deadline, and only
    then is the error raised. Each call waits at most the time left (0.1 s at least)."""
    while True:
        remaining = deadline - time.monotonic()
        try:
            return question(Management(management_url, timeout_s=max(0.1, min(MANAGEMENT_TIMEOUT_S, remaining))))
        except ManagementError:
            if time.monotonic() + RETRY_S >= deadline:
                raise
        time.sleep(RETRY_S)


def _ready_workers(management: Management, name: str, version: str) -> set[int]:
    described = management.describe(name, version)
    try:
        return {w["pid"] for m in described for w in m.get("workers", [])
                if w.get("status") == "READY" and w.get("pid")}
    except (TypeError, KeyError, AttributeError):  # no answer either: asked again, like an error
        raise ManagementError(f"unexpected answer to GET /models/{name}/{version}: {described!r:.200}") from None
