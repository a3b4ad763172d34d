"""Authorization: when the operator configures API keys, a request must present one of them."""

from __future__ import annotations

import hmac
from typing import Mapping

from .errors import RequestError


def authorize(headers: Mapping[str, str], api_keys: tuple[str, ...]) -> None:
    """Raises 401 unless `api_keys` is empty or the request carries one of them, as
    `Authorization: Bearer <key>` or `X-API-Key: <key>` (header names lower-cased). Compared in
    constant time, so response timing does not reveal how much of a key was right."""
    if not api_keys:
        return
    offered = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not any(hmac.compare_digest(offered.encode(), key.encode()) for key in api_keys):
        raise RequestError("unauthorized", "a valid API key is required: send it as "
                           "'Authorization: Bearer <key>' or 'X-API-Key: <key>'", status=401)
