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
    management = Management(management_url, timeout_s=3)
    try:
        versions = [(name, v["modelVersion"]) for name in management.models() for v in management.versions(name)]
    except ManagementError as error:
        log(f"drain: cannot list the models ({error}); stopping without draining")
        return
    with ThreadPoolExecutor(max(1, len(versions))) as pool:
        unanswered = pool.map(lambda nv: _stop_workers(inference_url, management, *nv, token, deadline), versions)
        unanswered = dict(zip(versions, unanswered))
    took = time.monotonic() - started
    for (name, version), pids in unanswered.items():
        if pids:
            log(f"drain: {name} v{version}: workers {sorted(pids)} still busy after {took:.1f} s; stopping anyway")
    log(f"drain: workers of {len(versions)} model versions stopped taking requests in {took:.1f} s")
    time.sleep(max(0.0, min(started + policy.grace_s, deadline) - time.monotonic()))


def _stop_workers(inference_url: str, management: Management, name: str, version: str, token: str,
                  deadline: float) -> set[int]:
    """Sends stop requests until each READY worker of the version has answered one (or the deadline
    passes); returns the pids that did not. Workers are looked up each round: a worker that dies
    while draining is not waited for, and one that replaces it is stopped too."""
    url = f"{inference_url}/predictions/{name}/{version}"
    answered: set[int] = set()
    with requests.Session() as session:
        def send(_) -> int | None:
            try:
                response = session.post(url, headers={HEADER: token}, timeout=max(0.1, deadline - time.monotonic()))
                return response.json()["pid"] if response.status_code == 200 else None
            except (requests.RequestException, ValueError, KeyError, TypeError):
                return None  # the queue was full (503), or the worker died: the next round retries

        while True:
            pending = _ready_workers(management, name, version) - answered
            if not pending or time.monotonic() >= deadline:
                return pending
            # As many at once as workers wait: each idle worker takes one; a busy worker's waits
            # in the queue until it is free (or an idle one takes it, and the next round resends).
            with ThreadPoolExecutor(len(pending)) as pool:
                answered.update(pid for pid in pool.map(send, range(len(pending))) if pid is not None)
            time.sleep(PAUSE_S)


def _ready_workers(management: Management, name: str, version: str) -> set[int]:
    try:
        return {w["pid"] for m in management.describe(name, version) for w in m.get("workers", [])
                if w.get("status") == "READY" and w.get("pid")}
    except (ManagementError, TypeError, KeyError):
        return set()
