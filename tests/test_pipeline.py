"""The request path without TorchServe: a batch in, one response per request out."""

import json
from dataclasses import replace

import pytest
import torch
from PIL import Image

from objdetect import pipeline, synthetic
from objdetect.errors import RequestError
from objdetect.pipeline import Detector, Request
from objdetect.synthetic import encode

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def detector(shapes_model, shapes_labels, default_settings, shapes_openvino_ir):
    return Detector(shapes_model, shapes_labels, default_settings, name="shapes", version="3.1",
                    openvino_ir=shapes_openvino_ir)


def body_of(response) -> dict:
    assert response.content_type == "application/json"
    return json.loads(response.body)


def test_a_mixed_batch_answers_each_request_in_order(detector):
    samples = [synthetic.generate(2_000_000_000 + i) for i in (6, 32)]  # ones it gets exactly right
    responses = detector([
        Request({"body": encode(samples[0].image)}),
        Request({"body": b"not an image"}),
        Request({"body": encode(samples[1].image, "JPEG", quality=95)}, {"content-type": "image/jpeg"}),
        Request({"body": b'{"b64": "@@"}'}, {"content-type": "application/json"}),
    ])
    assert [r.status for r in responses] == [200, 400, 200, 400]
    for response, sample in zip(responses[::2], samples):
        body = body_of(response)
        assert (body["model"], body["version"]) == ("shapes", "3.1")
        assert set(body["timings_ms"]) == {"decode", "transform", "predict", "postprocess", "total"}
        assert (body["width"], body["height"]) == sample.image.size
        assert sorted(d["label"] for d in body["detections"]) == sorted(sample.labels)
    assert body_of(responses[1])["error"] == "not_an_image"
    assert body_of(responses[3])["error"] == "bad_base64"


def test_urls_are_fetched_with_the_configured_fetcher(shapes_model, shapes_labels, default_settings, shapes_openvino_ir):
    sample = synthetic.generate(2_000_000_001)
    fetched = []

    def fetch(url, policy):
        assert policy == default_settings.fetch_policy()  # the URL settings, and nothing else
        fetched.append(url)
        if "refused" in url:
            raise RequestError("url_refused", "not public")
        return encode(sample.image)

    detector = Detector(shapes_model, shapes_labels, default_settings, fetch=fetch, openvino_ir=shapes_openvino_ir)
    good, bad = detector([Request({"body": b'{"url": "https://images.example/a.png"}'}),
                          Request({"body": b'{"url": "https://refused.example/a.png"}'}, {}, "r-2")])
    assert fetched == ["https://images.example/a.png", "https://refused.example/a.png"]
    assert good.status == 200 and "fetch" in body_of(good)["timings_ms"]
    assert bad.status == 400 and body_of(bad) == {"error": "url_refused", "message": "not public", "request_id": "r-2"}


def test_api_keys_guard_predictions_when_configured(detector, shapes_model, shapes_labels, shapes_openvino_ir):
    guarded = Detector(shapes_model, shapes_labels, replace(detector.settings, api_keys=("k-1", "k-2")),
                       openvino_ir=shapes_openvino_ir)
    image = encode(synthetic.generate(5).image)
    responses = guarded([
        Request({"body": image}),
        Request({"body": image}, {"authorization": "Bearer nope"}),
        Request({"body": image}, {"authorization": "Bearer k-2"}),
        Request({"body": image}, {"x-api-key": "k-1"}),
    ])
    assert [r.status for r in responses] == [401, 401, 200, 200]
    assert body_of(responses[0])["error"] == "unauthorized"


def test_an_image_that_breaks_the_model_fails_alone(detector, monkeypatch):
    real_predict = pipeline.predict

    def fragile_predict(model, images, fp16=False):
        if any(image.shape[-1] == 77 for image in images):
            raise RuntimeError("a shape the model cannot take")
        return real_predict(model, images, fp16)

    monkeypatch.setattr(pipeline, "predict", fragile_predict)
    poison = encode(Image.new("RGB", (77, 60)))
    fine = encode(synthetic.generate(9).image)
    responses = detector([Request({"body": fine}), Request({"body": poison}), Request({"body": fine})])
    assert [r.status for r in responses] == [200, 500, 200]
    assert body_of(responses[1])["error"] == "prediction_failed"
    (alone,) = detector([Request({"body": poison})])
    assert alone.status == 500 and body_of(alone)["error"] == "prediction_failed"


def builtin_exceptions() -> list[type[Exception]]:
    """Every exception class the standard library defines that a parser could raise (warnings aside)."""
    import builtins
    return sorted((value for value in vars(builtins).values() if isinstance(value, type)
                   and issubclass(value, Exception) and not issubclass(value, Warning)
                   and value.__module__ == "builtins"), key=lambda kind: kind.__name__)


def raising(kind: type[Exception]) -> Exception:
    for args in (("poisoned",), ("poisoned", [ValueError()]), ("utf-8", b"\xff", 0, 1, "poisoned"),
                 ("utf-8", "\xff", 0, 1, "poisoned"), ("\xff", 0, 1, "poisoned")):
        try:  # UnicodeDecodeError and ExceptionGroup want more than a message
            return kind(*args)
        except TypeError:
            continue
    raise AssertionError(f"cannot make a {kind.__name__}")


def test_any_exception_while_parsing_fails_its_request_alone(detector, monkeypatch):
    """One batch: a good image, then one request for each exception class, then a good image."""
    kinds = builtin_exceptions()
    real = pipeline.parse_request

    def parse(fields, *args):
        if fields["body"].startswith(b"raise "):
            raise raising(next(kind for kind in kinds if kind.__name__ == fields["body"][6:].decode()))
        return real(fields, *args)

    monkeypatch.setattr(pipeline, "parse_request", parse)
    fine = Request({"body": encode(synthetic.generate(9).image)})
    responses = detector([fine, *(Request({"body": f"raise {kind.__name__}".encode()}) for kind in kinds), fine])
    assert len(kinds) > 50 and [r.status for r in responses] == [200] + [500] * len(kinds) + [200]
    for response, kind in zip(responses[1:-1], kinds):
        assert body_of(response)["error"] == "request_failed" and f"({kind.__name__})" in body_of(response)["message"]


@pytest.mark.parametrize("kind", [ValueError, RecursionError, ZeroDivisionError])
@pytest.mark.parametrize("step", ["decode_image", "shrink_to_model", "postprocess"])
def test_an_unforeseen_exception_in_a_later_step_fails_its_request_alone(detector, monkeypatch, step, kind):
    real = getattr(pipeline, step)
    poison = encode(Image.new("RGB", (77, 60)))

    def poisoned(*args, **kwargs):
        if any(arg == poison or getattr(arg, "width", None) == 77 for arg in args):
            raise kind("poisoned")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, step, poisoned)
    fine = encode(synthetic.generate(9).image)
    responses = detector([Request({"body": fine}), Request({"body": poison}), Request({"body": fine})])
    assert [r.status for r in responses] == [200, 500, 200]
    assert body_of(responses[1])["error"] == "request_failed"


def test_out_of_memory_is_left_to_torchserve(detector, monkeypatch):
    def oom(model, images, fp16=False):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(pipeline, "predict", oom)
    with pytest.raises(torch.OutOfMemoryError):  # TorchServe turns it into 507 for the batch
        detector([Request({"body": encode(synthetic.generate(9).image)})] * 2)


def test_warm_up_runs_the_model_once_at_its_input_size(detector):
    seen = []
    hook = detector.model.transform.register_forward_pre_hook(lambda module, args: seen.append(args[0][0].shape))
    try:
        assert detector.warm_up() > 0
    finally:
        hook.remove()
    width, height = detector.spec.input_size(4000, 3000)  # a 4:3 image at the size the model resizes to
    assert seen == [(3, height, width)] and width / height == pytest.approx(4 / 3, rel=0.01)


@pytest.mark.parametrize("step", ["decode_image", "shrink_to_model", "postprocess"])
def test_out_of_memory_in_any_step_is_left_to_torchserve(detector, monkeypatch, step):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(pipeline, step, oom)
    with pytest.raises(torch.OutOfMemoryError):
        detector([Request({"body": encode(synthetic.generate(9).image)})])
