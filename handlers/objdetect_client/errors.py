"""Why a request got no answer, in a few words. requests passes on urllib3's messages, which name
connection pools and print object addresses ("HTTPConnectionPool(host=...): Max retries exceeded
... <urllib3.connection.HTTPConnection object at 0x7f...>"); a user reading one line per failed
image needs only the cause at the bottom of that chain."""

from __future__ import annotations

import re
import socket
import ssl
from typing import Iterator

import requests
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, ProtocolError, ReadTimeoutError


def describe(error: BaseException) -> str:
    """"connection refused", "no such host", "TLS: certificate verify failed: ...", "connect timed
    out", "read timed out", "connection closed without an answer", or else the deepest cause's
    message with object reprs removed."""
    chain = list(_causes(error))
    for cause in chain:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, (socket.gaierror, NameResolutionError)):
            return "no such host"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS: certificate verify failed: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS: {cause.reason or cause}"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
    for cause in chain:  # urllib3's NewConnectionError is a ConnectTimeoutError too: causes first
        if isinstance(cause, (requests.ConnectTimeout, ConnectTimeoutError, socket.timeout)) and not isinstance(
                cause, ReadTimeoutError):
            return "connect timed out"
        if isinstance(cause, (requests.ReadTimeout, ReadTimeoutError)):
            return "read timed out"
        if isinstance(cause, (ProtocolError, requests.exceptions.ChunkedEncodingError)):
            return "connection closed without an answer"
    return _plain(str(chain[-1])) or type(chain[-1]).__name__


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error, then what it wraps: urllib3 keeps causes in args and `reason`, Python in __cause__."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
        for linked in (getattr(current, "reason", None), current.__cause__, current.__context__):
            if isinstance(linked, BaseException):
                pending.append(linked)


def _plain(message: str) -> str:
    """Without "<... object at 0x...>: " and urllib3's pool prefix."""
    message = re.sub(r"<[^<>]* object at 0x[0-9a-f]+>:?\s*", "", message)
    message = re.sub(r"^\w*ConnectionPool\([^)]*\):\s*", "", message)
    return message.strip(" ()'\"")
