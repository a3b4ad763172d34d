"""`make fuzz SECONDS=600`: coverage-guided fuzzing (atheris, on libFuzzer) of the request path.

Each input becomes one request as a client could send it (`request_from`: a raw body under some
content type, JSON, base64 in JSON, a multipart form with its image in a field of any of the names
clients use, or an image URL) or as an attacker would shape one (JSON options nested to a depth the
input picks, a progressive JPEG of as many scans as it picks, a TIFF carrying the tags it picks),
and goes through the whole
`Detector` of the embedded model: parsing, options, the URL guard (with a resolver that hands out
public and private addresses alike, and never the network), decoding, transform, predict,
postprocess. The only answers allowed are a 200 and our own JSON 4xx (`answer_problem`); anything
else (an exception, a 5xx, a malformed body) is a crash: libFuzzer writes its input to
reports/fuzz/crash-*, and that input becomes a regression test (tests/test_fuzz.py).
tests/test_fuzz.py also runs the same mapping under hypothesis, and this harness for a few seconds.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import ipaddress
import json
import sys
import warnings
from pathlib import Path

FORMS = ("raw", "json", "b64", "form", "url", "deep_json", "scans", "tiff")
CONTENT_TYPES = (None, "image/jpeg", "image/png", "application/octet-stream", "application/json",
                 "text/plain", "multipart/form-data", "application/problem+json")
OPTION_NAMES = ("threshold", "max_detections", "classes", "render")  # objdetect.inputs' options
FILE_FIELDS = ("data", "body", "file", "image")  # "body" is also what TorchServe calls a raw body
OUT = Path("reports/fuzz")


def request_from(data: bytes):
    """One request from fuzzer bytes: byte 0 picks the form, byte 1 the content type; the rest is
    the payload. A form's payload is `name=value` option lines, a NUL, then the file."""
    from objdetect.messages import Request

    form, content_type = FORMS[data[0] % len(FORMS)] if data else "raw", \
        CONTENT_TYPES[data[1] % len(CONTENT_TYPES)] if len(data) > 1 else None
    payload = data[2:]
    headers = {"content-type": content_type} if content_type else {}
    if form == "raw":
        return Request({"body": payload}, headers)
    if form == "json":
        return Request({"body": payload}, {"content-type": "application/json"})
    if form == "b64":
        body = json.dumps({"b64": base64.b64encode(payload).decode()}).encode()
        return Request({"body": body}, {"content-type": "application/json"})
    if form == "url":
        return Request({"body": json.dumps({"url": payload.decode("utf-8", "surrogateescape")}).encode()},
                       {"content-type": "application/json"})
    if form == "deep_json":
        return Request({"body": deep_json(payload)}, {"content-type": "application/json"})
    if form == "scans":
        return Request({"body": progressive_jpeg(int.from_bytes(payload[:2], "big"), payload[2:])}, headers)
    if form == "tiff":
        return Request({"body": tiff_with_tags(payload)}, headers)
    options, _, image = payload.partition(b"\0")
    fields = {name: value for name, _, value in (line.partition(b"=") for line in options.split(b"\n"))
              if name.decode("latin-1") in OPTION_NAMES}
    file_field = FILE_FIELDS[data[1] % len(FILE_FIELDS)] if len(data) > 1 else "data"
    return Request({**{name.decode("latin-1"): value for name, value in fields.items()}, file_field: image},
                   {"content-type": "multipart/form-data"})


def deep_json(payload: bytes) -> bytes:
    """{"url": ..., <option>: [[[...<value>...]]]}: bytes 0-1 the depth (to past Python's recursion
    limit), byte 2 the option, the rest the innermost value's text."""
    depth = int.from_bytes(payload[:2].ljust(2, b"\0"), "big") % 3000
    option = OPTION_NAMES[payload[2] % len(OPTION_NAMES)] if len(payload) > 2 else "threshold"
    inner = payload[3:].decode("latin-1") or "1"
    return ('{"url": "https://images.example.com/a.jpg", "%s": %s%s%s}'
            % (option, "[" * depth, inner, "]" * depth)).encode("latin-1")


def progressive_jpeg(scans: int, tail: bytes = b"") -> bytes:
    """A small progressive JPEG whose last scan is repeated to `scans` scans (libjpeg decodes each
    over the whole image), `tail` appended inside the last scan's data."""
    from PIL import Image

    from objdetect import synthetic

    encoded = synthetic.encode(Image.new("RGB", (96, 64), (200, 60, 30)), "JPEG", progressive=True)
    last = encoded.rindex(b"\xff\xda")
    written = encoded.count(b"\xff\xda")
    return encoded[:last] + encoded[last:-2] * max(1, scans - written + 1) + tail + b"\xff\xd9"


def tiff_with_tags(payload: bytes) -> bytes:
    """A small TIFF carrying the tags `payload` names: 6 bytes each, a tag id and a 4-byte value
    (orientation, sizes, strip offsets and counts, anything); where Pillow cannot write them, the
    payload itself."""
    import io

    from PIL import Image, TiffImagePlugin

    tags = TiffImagePlugin.ImageFileDirectory_v2()
    for at in range(0, len(payload) - 5, 6):
        tags[int.from_bytes(payload[at:at + 2], "big")] = int.from_bytes(payload[at + 2:at + 6], "big")
    out = io.BytesIO()
    try:
        Image.new("RGB", (40, 24), (30, 90, 200)).save(out, "TIFF", tiffinfo=tags)
    except Exception:  # noqa: BLE001 - tags Pillow refuses to write: the bytes as they are
        return payload
    return out.getvalue()


def seeds() -> dict[str, bytes]:
    """Starting inputs: a small generated image in each accepted format, in each form."""
    from objdetect import synthetic

    image = synthetic.generate(seed=11).image.resize((64, 48))
    found = {}
    for fmt in ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"):
        encoded = synthetic.encode(image, fmt)
        found[f"raw-{fmt.lower()}"] = bytes([FORMS.index("raw"), 0]) + encoded
        found[f"b64-{fmt.lower()}"] = bytes([FORMS.index("b64"), 4]) + encoded
    found["form-png"] = bytes([FORMS.index("form"), 6]) + b"threshold=0.3\nclasses=circle\0" + synthetic.encode(image)
    found["json-options"] = bytes([FORMS.index("json"), 4]) + b'{"b64": "", "threshold": 0.2, "render": true}'
    found["url"] = bytes([FORMS.index("url"), 4]) + b"http://images.example.com/photo.jpg"
    found["url-fullwidth"] = bytes([FORMS.index("url"), 4]) + "http://１．１．１．１/a.jpg".encode()
    found["form-body-field"] = bytes([FORMS.index("form"), FILE_FIELDS.index("body")]) + b"threshold=banana\0" + \
        synthetic.encode(image)
    found["json-huge-number"] = bytes([FORMS.index("json"), 4]) + b'{"url": "http://a.example/x", "threshold": ' + \
        b"9" * 400 + b"}"
    found["deep-json"] = bytes([FORMS.index("deep_json"), 4]) + (984).to_bytes(2, "big") + b"\0" + b"1"
    found["scans-11"] = bytes([FORMS.index("scans"), 1]) + (11).to_bytes(2, "big")
    found["scans-33"] = bytes([FORMS.index("scans"), 1]) + (33).to_bytes(2, "big")
    found["tiff-orientation-6"] = bytes([FORMS.index("tiff"), 0]) + (0x0112).to_bytes(2, "big") + (6).to_bytes(4, "big")
    return found


def fake_resolver(host: str, port: int) -> list[str]:
    """Any host -> one address picked by its hash, loopback, private and metadata ones included."""
    digest = hashlib.sha256(host.encode("utf-8", "surrogatepass")).digest()
    return [str(ipaddress.ip_address(int.from_bytes(digest[:4], "big")))]


def offline_fetch(image: bytes):
    """A fetch that runs the real URL guard, then answers `image` instead of connecting."""
    from objdetect.fetch import checked_target

    def fetch(url, policy):
        checked_target(url, policy, fake_resolver)
        return image

    return fetch


def answer_problem(response) -> str | None:
    """None for what a client may get: a 200 with detections (or a rendered JPEG), or one of our
    JSON 4xx errors; else what is wrong with it."""
    if response.status == 200 and response.content_type == "image/jpeg":
        return None if response.body[:2] == b"\xff\xd8" else "a render that is not a JPEG"
    try:
        body = json.loads(response.body)
    except ValueError:
        return f"HTTP {response.status} with a body that is not JSON: {response.body[:80]!r}"
    if response.status == 200:
        return None if isinstance(body.get("detections"), list) else f"a 200 without detections: {body}"
    if 400 <= response.status < 500 and isinstance(body.get("error"), str) and isinstance(body.get("message"), str):
        return None
    return f"HTTP {response.status}: {body}"


def detector():
    """The embedded model's Detector on eager torch (starts in a second; OpenVINO is fuzzed through
    the same path in the tests), with the offline fetch."""
    import torch

    from objdetect import registry
    from objdetect.pipeline import Detector
    from objdetect.settings import Settings
    from objdetect_serving.archive import default_weights

    torch.set_num_threads(1)
    arch = registry.architecture(registry.EMBEDDED)
    model = registry.build_model(arch.name, list(arch.labels), registry.load_state_dict(default_weights(arch)[0]))
    return Detector(model, list(arch.labels), Settings(runtime="torch", max_pixels=4_000_000), readers=1,
                    fetch=offline_fetch(seeds()["raw-png"][2:]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=600, help="how long to fuzz")
    parser.add_argument("--out", type=Path, default=OUT, help="corpus (kept between runs) and crash inputs")
    args = parser.parse_args(argv)

    import atheris

    # Instrumented: our code, and Pillow's Python half (its format plugins parse the headers).
    with atheris.instrument_imports(include=["objdetect", "PIL"]):
        answer = detector()
    corpus = args.out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (corpus / name).write_bytes(data)

    def one_input(data: bytes) -> None:
        problem = answer_problem(answer([request_from(data)])[0])
        if problem:
            raise AssertionError(problem)

    warnings.simplefilter("ignore")  # Pillow warns about every corrupt file it reads: here, each input
    print(f"fuzz: {args.seconds} s; corpus {corpus}; crash inputs go to {args.out}/crash-*", flush=True)
    atheris.Setup([sys.argv[0], f"-max_total_time={args.seconds}", f"-artifact_prefix={args.out}/",
                   "-rss_limit_mb=4096", "-timeout=30", str(corpus)], one_input)
    atheris.Fuzz()  # exits the process: 0 when the time is up, else the crash's status
    return 0
