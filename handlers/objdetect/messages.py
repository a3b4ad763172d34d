"""What TorchServe hands the request path and takes back from it: one request, one response.
Its own module, without torch: objdetect.drain uses it, and the health check's process imports that."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping

from .errors import RequestError
from .telemetry import RequestRecord


@dataclass(frozen=True)
class Request:
    fields: Mapping[str, bytes]  # the named inputs: "body", or a form's fields
    headers: Mapping[str, str] = field(default_factory=dict)  # names lower-cased
    id: str = ""  # TorchServe's request id
    client_id: str | None = None  # telemetry.client_request_id


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    record: RequestRecord | None = None  # what operators see of it; None: not a client's request

    @classmethod
    def error(cls, error: RequestError, request_id: str = "", client_request_id: str | None = None,
              **record) -> "Response":
        body = {**error.to_dict(), "request_id": request_id}
        if client_request_id:
            body["client_request_id"] = client_request_id
        return cls(error.status, json.dumps(body).encode("utf-8"), record=RequestRecord(
            request_id, error.status, error.code, client_request_id=client_request_id, **record))
