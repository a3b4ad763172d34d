"""A worker's part in a graceful shutdown (the server's part: objdetect_serving/drain.py).

TorchServe queues a model's requests first in, first out, and each worker answers its batches in
turn. So when, after SIGTERM, a worker answers a *stop request* (a request that carries this
server's drain token), everything queued before that request has already gone to a worker, and
this worker has answered everything it took before. From then on the worker answers each request
with a quick JSON 503 `shutting_down`, so what still arrives is refused politely, not dropped.
Once every worker has answered a stop request, nothing accepted before the signal is unanswered.

The token is random per server and reaches the workers in their environment: a client cannot
send a stop request.
"""

from __future__ import annotations

import hmac
import json
import os
from typing import Callable, Mapping

from .errors import RequestError
from .messages import Request, Response

TOKEN_ENV = "OBJDETECT_DRAIN_TOKEN"
HEADER = "x-objdetect-drain"
SHUTTING_DOWN = RequestError("shutting_down", "this server is shutting down; send the request again "
                             "(a load balancer sends it to another server)", status=503)


class Drain:
    def __init__(self, environ: Mapping[str, str] = os.environ):
        self.token = environ.get(TOKEN_ENV, "")
        self.stopped = False

    def is_stop_request(self, headers: Mapping[str, str]) -> bool:
        sent = headers.get(HEADER, "")
        return bool(self.token) and hmac.compare_digest(sent.encode(), self.token.encode())

    def answer(self, requests: list[Request], serve: Callable[[list[Request]], list[Response]]) -> list[Response]:
        """`serve`'s responses, or 503s once stopped. A stop request is answered with this worker's
        pid (the server waits until every worker has answered one); the batch it came in is served."""
        if self.stopped:
            return [Response.error(SHUTTING_DOWN, request.id, request.client_id) for request in requests]
        stop = [self.is_stop_request(request.headers) for request in requests]
        served = iter(serve([request for request, is_stop in zip(requests, stop) if not is_stop]))
        self.stopped = any(stop)
        stopped = Response(200, json.dumps({"stopped": True, "pid": os.getpid()}).encode())
        return [stopped if is_stop else next(served) for is_stop in stop]
