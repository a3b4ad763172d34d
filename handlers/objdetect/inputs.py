"""Input: what the client sent -> an image (bytes or a URL to fetch) and validated options.

Three request forms reach a TorchServe handler as a mapping of named fields:
- a raw image body, in the field "body", with the default options (TorchServe 0.12 does not pass
  query parameters on to handlers, so options need one of the other two forms);
- a multipart form: the image in a file field of any name, options as other fields;
- a JSON body {"url": ...} or {"b64": ...} with options as keys.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import RequestError

OPTION_NAMES = ("threshold", "max_detections", "classes", "render")
SOURCE_NAMES = ("url", "b64")


@dataclass(frozen=True)
class Options:
    threshold: float
    max_detections: int
    classes: frozenset[str] | None = None  # None keeps every class
    render: bool = False


@dataclass(frozen=True)
class ImageRequest:
    """Exactly one of `image` (encoded bytes) and `url` is set."""

    options: Options
    image: bytes | None = None
    url: str | None = None


@dataclass(frozen=True)
class OptionLimits:
    """What the serving model allows: its labels and its per-image detection cap."""

    labels: tuple[str, ...]  # the class names a request may ask for
    max_detections: int
    default_threshold: float = 0.5


def parse_request(fields: Mapping[str, bytes], content_type: str | None, limits: OptionLimits) -> ImageRequest:
    """One request's named fields ("body", or a form's fields) -> ImageRequest; raises RequestError
    naming what is wrong."""
    if set(fields) != {"body"}:  # a form (a file field may be called "body" too: its options count)
        return _parse_multipart(fields, limits)
    body = fields["body"]
    if _is_json(content_type, body):
        return _parse_json(body, limits)
    if not body:
        raise RequestError("empty_body", "the request body is empty: send an image, or JSON with 'url' or 'b64'")
    return ImageRequest(parse_options({}, limits), image=bytes(body))


def parse_options(raw: Mapping[str, Any], limits: OptionLimits) -> Options:
    """Options from JSON (typed values) or form fields (strings), checked against the model."""
    unknown = sorted(set(raw) - set(OPTION_NAMES))
    if unknown:
        raise RequestError("unknown_option", f"unknown option(s) {', '.join(map(shown, unknown[:10]))}; "
                           f"known: {', '.join(OPTION_NAMES)}")
    threshold = limits.default_threshold
    if "threshold" in raw:
        threshold = _number(raw["threshold"], "threshold", float)
        if not 0 <= threshold <= 1:
            raise RequestError("bad_option", f"threshold must be between 0 and 1, got {threshold}")
    max_detections = limits.max_detections
    if "max_detections" in raw:
        max_detections = _number(raw["max_detections"], "max_detections", int)
        if not 1 <= max_detections <= limits.max_detections:
            raise RequestError("bad_option", f"max_detections must be an integer from 1 to "
                               f"{limits.max_detections}, got {max_detections}")
    classes = None
    if "classes" in raw:
        classes = _classes(raw["classes"], limits.labels)
    render = _boolean(raw["render"], "render") if "render" in raw else False
    return Options(threshold, max_detections, classes, render)


def _parse_json(data: bytes, limits: OptionLimits) -> ImageRequest:
    try:
        body = json.loads(bytes(data).decode("utf-8"))
    except RecursionError:
        raise RequestError("bad_json", "the JSON body is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise RequestError("bad_json", f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise RequestError("bad_json", "the JSON body must be an object like {\"url\": \"https://...\"} "
                           "or {\"b64\": \"<base64 image>\"}")
    sources = [name for name in SOURCE_NAMES if name in body]
    if len(sources) != 1:
        raise RequestError("bad_json", "the JSON body must have exactly one of 'url' and 'b64'")
    options = parse_options({k: v for k, v in body.items() if k not in SOURCE_NAMES}, limits)
    source = body[sources[0]]
    if not isinstance(source, str) or not source.strip():
        raise RequestError("bad_json", f"'{sources[0]}' must be a non-empty string")
    if sources[0] == "url":
        return ImageRequest(options, url=source.strip())
    return ImageRequest(options, image=_decode_base64(source))


def _parse_multipart(fields: Mapping[str, bytes], limits: OptionLimits) -> ImageRequest:
    files = [name for name in fields if name not in OPTION_NAMES]
    if not files:
        raise RequestError("empty_body", "no image in the request: send it as the body, in a multipart "
                           "file field (e.g. curl -F data=@photo.jpg), or as JSON with 'url' or 'b64'")
    if len(files) > 1:
        raise RequestError("bad_form", f"the form has several image fields ({', '.join(map(shown, sorted(files)[:10]))}); "
                           "send one image per request")
    image = fields[files[0]]
    if not image:
        raise RequestError("empty_body", f"the form field {shown(files[0])} is empty")
    options = {name: _text(fields[name]) for name in OPTION_NAMES if name in fields}
    return ImageRequest(parse_options(options, limits), image=bytes(image))


def _decode_base64(text: str) -> bytes:
    if text.startswith("data:"):  # a data URI, as browsers produce: data:image/png;base64,....
        text = text.partition(",")[2]
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError("bad_base64", f"'b64' is not valid base64: {error}") from None
    if not data:
        raise RequestError("empty_body", "'b64' decodes to no bytes")
    return data


def _is_json(content_type: str | None, body: bytes) -> bool:
    media_type = (content_type or "").split(";")[0].strip().lower()
    # No image format starts with "{" or "[", so an unlabelled JSON body is still recognised.
    return media_type == "application/json" or media_type.endswith("+json") or body.lstrip()[:1] in (b"{", b"[")


def _text(value: bytes) -> str:
    """A form field's value, which options read as text."""
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("bad_option", "option values must be UTF-8 text") from None


def _number(value: Any, name: str, kind: type) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError("bad_option", f"{name} must be a number, got {shown(value)}")
    try:
        number = float(value)
    except (ValueError, OverflowError):  # OverflowError: an integer of hundreds of digits
        raise RequestError("bad_option", f"{name} must be a number in range, got {shown(value)}") from None
    if not math.isfinite(number) or (kind is int and not number.is_integer()):
        raise RequestError("bad_option", f"{name} must be {'an integer' if kind is int else 'a finite number'}, "
                           f"got {shown(value)}")
    return kind(number)


def _boolean(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise RequestError("bad_option", f"{name} must be true or false, got {shown(value)}")


def shown(value: Any, limit: int = 80) -> str:
    """A client's value as an error message may quote it: short, and never by recursing into it
    (a list nested a thousand deep) or printing a huge integer in full."""
    if isinstance(value, (list, dict)):
        return f"a JSON {'array' if isinstance(value, list) else 'object'}"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, str):
        value = value[:limit + 1]
    text = json.dumps(value, ensure_ascii=False) if value is None or isinstance(value, (bool, str)) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _classes(value: Any, labels: tuple[str, ...]) -> frozenset[str]:
    if isinstance(value, str):  # from a form field: "person,car"
        value = [name.strip() for name in value.split(",") if name.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(name, str) for name in value):
        raise RequestError("bad_option", "classes must be a non-empty list of label names")
    unknown = sorted(set(value) - set(labels))
    if unknown:
        raise RequestError("bad_option", f"unknown class(es) {', '.join(map(shown, unknown[:10]))}; "
                           f"this model knows: {', '.join(labels)}")
    return frozenset(value)
