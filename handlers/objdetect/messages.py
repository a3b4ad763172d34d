"""What TorchServe hands the request path and takes back from it: one request, one response.
Its own module, without torch: objdetect.drain uses it, and the health check's process imports that."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping

from .errors import RequestError


@dataclass(frozen=True)
class Request:
    fields: Mapping[str, bytes]  # the named inputs: "body", or a form's fields
    headers: Mapping[str, str] = field(default_factory=dict)  # names lower-cased


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def error(cls, error: RequestError) -> "Response":
        return cls(error.status, json.dumps(error.to_dict()).encode("utf-8"))
