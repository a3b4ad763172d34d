"""Client: one image to the server and its answer back as a Result, retried when the server is busy.

Images travel as multipart forms (options beside them, which a raw body cannot carry: TorchServe
0.12 passes no query parameters); http(s) URLs travel as JSON, and the server downloads them.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import requests

from . import render, sources
from .result import Detection, Result

DEFAULT_ENDPOINT = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class Retry:
    """Exponential backoff with full jitter: a crowd of clients does not come back in step."""

    attempts: int = 5  # tries in all
    backoff_s: float = 0.5
    max_backoff_s: float = 20.0

    def delay_s(self, attempt: int) -> float:
        """Before try `attempt` + 1 (the first retry is attempt 1)."""
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))


class Client:
    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, model: str = "detector", version: str | None = None,
                 api_key: str | None = None, timeout_s: float = 60, retry: Retry = Retry()):
        self.url = f"{endpoint.rstrip('/')}/predictions/{model}" + (f"/{version}" if version else "")
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.timeout_s = timeout_s
        self.retry = retry
        self._local = threading.local()  # a requests.Session per thread: sessions are not thread-safe

    def detect(self, image: str | Path | bytes, *, name: str | None = None, threshold: float | None = None,
               classes: Sequence[str] | None = None, max_detections: int | None = None,
               render_to: Path | None = None) -> Result:
        """One image: a file path, an http(s) URL (the server fetches it), an s3:// URL, or bytes.
        `name` is the Result's source (default: the path or URL); `render_to`: a folder where an
        answered image is saved with its boxes drawn (render.py). Never raises for a bad image or a
        failed request: the Result says what went wrong."""
        options = {key: value for key, value in
                   (("threshold", threshold), ("classes", list(classes) if classes else None),
                    ("max_detections", max_detections)) if value is not None}
        if isinstance(image, bytes):
            result = self._send(name or "<bytes>", lambda session: session.post(
                self.url, files={"data": ("image", image)}, data=_form(options), **self._request()))
            if render_to is not None and result.ok:
                render.save(image, result, render_to)
            return result
        name = name or str(image)
        if sources.is_url(str(image)) and render_to is None:
            return self._send(name, lambda session: session.post(
                self.url, json={"url": str(image), **options}, **self._request()))
        try:
            data = sources.read(str(image))  # a URL too when rendering: its render needs the pixels
        except (OSError, sources.SourceError) as error:
            return Result(name, error="unreadable", message=str(error))
        return self.detect(data, name=name, render_to=render_to, **options)

    def detect_many(self, images: Iterable[str], concurrency: int = 4, **options) -> Iterator[Result]:
        """Results as they complete, `concurrency` requests in flight; `options` as for detect.
        Closing the iterator early cancels what has not started."""
        with ThreadPoolExecutor(concurrency) as pool:
            futures = [pool.submit(self.detect, image, **options) for image in images]
            try:
                for future in as_completed(futures):
                    yield future.result()
            finally:
                for future in futures:
                    future.cancel()

    def _request(self) -> dict:
        return {"headers": self.headers, "timeout": self.timeout_s}

    def _send(self, name: str, send: Callable[[requests.Session], requests.Response]) -> Result:
        session, attempt = self._session(), 1
        while True:
            try:
                result = _result(name, send(session))
            except requests.ConnectionError as error:  # refused, reset, DNS, connect timeout
                result = Result(name, error="connection_failed", message=str(error))
            except requests.Timeout as error:  # a read timeout: the server may still be at it; not resent
                return Result(name, error="timeout", message=str(error))
            if not result.transient or attempt >= self.retry.attempts:  # a 4xx is about the image: final
                return result
            time.sleep(self.retry.delay_s(attempt))
            attempt += 1

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session


def _form(options: dict) -> dict:
    return {key: ",".join(value) if isinstance(value, list) else str(value) for key, value in options.items()}


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
