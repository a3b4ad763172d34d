"""`make fuzz SECONDS=600`: coverage-guided fuzzing (atheris, on libFuzzer) of the request path.

Each input becomes one request as a client could send it (`request_from`: a raw body under some
content type, JSON, base64 in JSON, a multipart form, or an image URL) and goes through the whole
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

FORMS = ("raw", "json", "b64", "form", "url")
CONTENT_TYPES = (None, "image/jpeg", "image/png", "application/octet-stream", "application/json",
                 "text/plain", "multipart/form-data", "application/problem+json")
OPTION_NAMES = ("threshold", "max_detections", "classes", "render")  # objdetect.inputs' options
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
        return Request({"body": json.dumps({"url": payload.decode("latin-1")}).encode()},
                       {"content-type": "application/json"})
    options, _, image = payload.partition(b"\0")
    fields = {name: value for name, _, value in (line.partition(b"=") for line in options.split(b"\n"))
              if name.decode("latin-1") in OPTION_NAMES}
    return Request({**{name.decode("latin-1"): value for name, value in fields.items()}, "data": image},
                   {"content-type": "multipart/form-data"})


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
