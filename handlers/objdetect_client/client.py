"""Client: one image to the server and its answer back as a Result, retried when the server is busy.

Images travel as multipart forms (options beside them, which a raw body cannot carry: TorchServe
0.12 passes no query parameters); http(s) URLs travel as JSON, and the server downloads them.
"""

from __future__ import annotations

import ipaddress
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence
from urllib.parse import urlsplit

import requests

from . import render, sources
from .errors import describe
from .result import RETRIED_STATUSES, Detection, Result

DEFAULT_ENDPOINT = "http://127.0.0.1:8080"
# A server that is there accepts a connection in milliseconds; one that is not never does, and
# waiting the whole answer timeout for it would only delay the retry.
CONNECT_TIMEOUT_S = 10.0


class Unreachable(Exception):
    """No HTTP answer at all from the endpoint (nothing listening, no such host, a network that
    drops the packets): retrying image after image cannot help, so the run stops."""

    def __init__(self, endpoint: str, reason: str, in_a_row: int = 0):
        self.endpoint, self.reason, self.in_a_row = endpoint, reason, in_a_row
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"cannot reach {self.endpoint}"
        if self.in_a_row:
            where += f" ({self.in_a_row} images in a row got no answer)"
        if self.reason in ("connection refused", "connect timed out"):
            local = _is_loopback(self.endpoint)
            return f"{where}: is the server running?" + (" (make serve)" if local else "")
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class Retry:
    """Exponential backoff with full jitter: a crowd of clients does not come back in step."""

    attempts: int = 5  # tries in all
    backoff_s: float = 0.5
    max_backoff_s: float = 20.0

    def delay_s(self, attempt: int) -> float:
        """Before try `attempt` + 1 (the first retry is attempt 1)."""
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))


def normalize_endpoint(endpoint: str) -> str:
    """The endpoint as a base URL: http:// when it names no scheme (`localhost:8080`), no trailing
    slash. Raises ValueError for what cannot be one, before anything is sent to it."""
    text = endpoint.strip()
    url = text if "://" in text else f"http://{text}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{endpoint!r} is not an http:// or https:// address")
    try:
        _ = parts.port  # a port that is not a number raises here
    except ValueError:
        raise ValueError(f"{endpoint!r} has no valid port") from None
    if not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"{endpoint!r} is not a server's address (scheme://host:port)")
    return url.rstrip("/")


class Client:
    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, model: str = "detector", version: str | None = None,
                 api_key: str | None = None, timeout_s: float = 60, retry: Retry = Retry()):
        self.endpoint = normalize_endpoint(endpoint)
        self.url = f"{self.endpoint}/predictions/{model}" + (f"/{version}" if version else "")
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.timeout_s = timeout_s
        self.retry = retry
        self._local = threading.local()  # a requests.Session per thread: sessions are not thread-safe

    def check(self) -> int | None:
        """GET /ping, before any image is sent: any HTTP answer means the server is there, and its
        status is returned (None when it connected but did not answer in time). A 503 (models still
        loading, or a drain) is asked again by the retry policy, so a run started beside a loading
        server waits for it; one that stays 503 is left to the images' own retries. Raises
        Unreachable at once when nothing answers: sending images there would only fail each one
        slowly, through its whole backoff."""
        session = self._session()
        for attempt in range(1, self.retry.attempts + 1):
            try:
                status = session.get(f"{self.endpoint}/ping", timeout=self._timeout()).status_code
            except requests.ConnectionError as error:
                raise Unreachable(self.endpoint, describe(error)) from None
            except requests.Timeout:
                return None
            if status not in RETRIED_STATUSES or attempt == self.retry.attempts:
                return status
            time.sleep(self.retry.delay_s(attempt))
        return None

    def detect(self, image: str | Path | bytes, *, name: str | None = None, threshold: float | None = None,
               classes: Sequence[str] | None = None, max_detections: int | None = None,
               render_to: Path | None = None) -> Result:
        """One image: a file path, an http(s) URL (the server fetches it), an s3:// URL, or bytes.
        `name` is the Result's source (default: the path or URL); `render_to`: a folder where an
        answered image is saved with its boxes drawn (render.py). Never raises for a bad image or a
        failed request: the Result says what went wrong."""
        return self._detect(image, name, _options(threshold, classes, max_detections), render_to, _NEVER)

    def detect_many(self, images: Iterable[str], concurrency: int = 4, *, give_up_after: int | None = None,
                    **options) -> Iterator[Result]:
        """Results as they complete, `concurrency` requests in flight; `options` as for detect.

        After `give_up_after` images in a row got no answer (each after its retries), raises
        Unreachable instead of going on: a server that went away would otherwise fail every
        remaining image through its whole backoff. Closing the iterator early, or that exception,
        cancels what has not started and cuts short the backoff of what has."""
        render_to = options.pop("render_to", None)
        sent_options = _options(**options)
        stop = threading.Event()
        pool = ThreadPoolExecutor(concurrency)
        futures = [pool.submit(self._detect, image, None, sent_options, render_to, stop) for image in images]
        in_a_row = 0
        try:
            for future in as_completed(futures):
                result = future.result()
                yield result
                in_a_row = in_a_row + 1 if result.error == "connection_failed" else 0
                if give_up_after and in_a_row >= give_up_after:
                    raise Unreachable(self.endpoint, _reason(result.message, self.endpoint), in_a_row)
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def _detect(self, image: str | Path | bytes, name: str | None, options: dict, render_to: Path | None,
                stop: threading.Event) -> Result:
        if isinstance(image, bytes):
            result = self._send(name or "<bytes>", stop, lambda session: session.post(
                self.url, files={"data": ("image", image)}, data=_form(options), **self._request()))
            if render_to is not None and result.ok:
                render.save(image, result, render_to)
            return result
        name = name or str(image)
        if sources.is_url(str(image)) and render_to is None:
            return self._send(name, stop, lambda session: session.post(
                self.url, json={"url": str(image), **options}, **self._request()))
        try:
            data = sources.read(str(image))  # a URL too when rendering: its render needs the pixels
        except (OSError, sources.SourceError) as error:
            return Result(name, error="unreadable", message=str(error))
        return self._detect(data, name, options, render_to, stop)

    def _timeout(self) -> tuple[float, float]:
        return min(CONNECT_TIMEOUT_S, self.timeout_s), self.timeout_s

    def _request(self) -> dict:
        return {"headers": self.headers, "timeout": self._timeout()}

    def _send(self, name: str, stop: threading.Event,
              send: Callable[[requests.Session], requests.Response]) -> Result:
        session, attempt = self._session(), 1
        while True:
            try:
                result = _result(name, send(session))
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as error:
                # refused, reset, DNS, connect timeout, or the connection dropped mid-answer
                result = Result(name, error="connection_failed", message=f"cannot reach {self.endpoint}: "
                                                                         f"{describe(error)}")
            except requests.Timeout:  # a read timeout: the server may still be at it; not resent
                return Result(name, error="timeout", message=f"no answer within {self.timeout_s:g} s")
            except requests.RequestException as error:
                return Result(name, error="request_failed", message=describe(error))
            if not result.transient or attempt >= self.retry.attempts:  # a 4xx is about the image: final
                return result
            if stop.wait(self.retry.delay_s(attempt)):  # the run stopped: no more resends
                return result
            attempt += 1

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session


_NEVER = threading.Event()  # the stop of a lone detect(): never set


def _options(threshold: float | None = None, classes: Sequence[str] | None = None,
             max_detections: int | None = None) -> dict:
    return {key: value for key, value in (("threshold", threshold), ("classes", list(classes) if classes else None),
                                          ("max_detections", max_detections)) if value is not None}


def _form(options: dict) -> dict:
    return {key: ",".join(value) if isinstance(value, list) else str(value) for key, value in options.items()}


def _reason(message: str | None, endpoint: str) -> str:
    """A connection_failed Result's message without its "cannot reach <endpoint>: "."""
    return (message or "").removeprefix(f"cannot reach {endpoint}: ")


def _is_loopback(endpoint: str) -> bool:
    host = urlsplit(endpoint).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _result(name: str, response: requests.Response) -> Result:
    request_id = response.headers.get("X-Request-Id")
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 200 and isinstance(body, dict) and "detections" in body:
        return Result(name, body["width"], body["height"], tuple(Detection.from_json(d) for d in body["detections"]),
                      request_id=request_id, model=body.get("model"), version=body.get("version"))
    body = body if isinstance(body, dict) else {}
    return Result(name, error=body.get("error") or body.get("type") or f"http_{response.status_code}",
                  message=body.get("message") or response.text[:200] or response.reason,
                  status=response.status_code, request_id=request_id)
