"""Input parsing: every request form and option, and the errors a client gets back."""

import base64
import json
import sys

import pytest

from objdetect.errors import RequestError
from objdetect.inputs import OptionLimits, parse_request

pytestmark = pytest.mark.unit

LIMITS = OptionLimits(labels=("circle", "square", "triangle"), max_detections=100, default_threshold=0.5)
IMAGE = b"\x89PNG\r\n\x1a\n...pixels"


def parse(fields, content_type=None):
    return parse_request(fields, content_type, LIMITS)


def error_of(fields, content_type=None) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse(fields, content_type)
    return caught.value


def test_raw_body_is_the_image_with_default_options():
    request = parse({"body": IMAGE}, "image/png")
    assert request.image == IMAGE and request.url is None
    assert (request.options.threshold, request.options.max_detections) == (0.5, 100)
    assert request.options.classes is None and request.options.render is False


def test_form_fields_set_options_as_text():
    request = parse({"data": IMAGE, "threshold": b"0.25", "max_detections": b"7",
                     "classes": b"circle, square", "render": b"true"})
    assert request.options.threshold == 0.25
    assert request.options.max_detections == 7
    assert request.options.classes == {"circle", "square"}
    assert request.options.render is True


def test_multipart_file_field_of_any_name_with_option_fields():
    request = parse({"photo": IMAGE, "threshold": b"0.9"})
    assert request.image == IMAGE and request.options.threshold == 0.9


def test_multipart_with_two_images_is_refused():
    assert error_of({"a": IMAGE, "b": IMAGE}).code == "bad_form"


def test_json_url_with_options():
    body = json.dumps({"url": "https://example.com/cat.jpg", "threshold": 0.3, "classes": ["triangle"],
                       "max_detections": 5, "render": False}).encode()
    request = parse({"body": body}, "application/json")
    assert request.url == "https://example.com/cat.jpg" and request.image is None
    assert request.options.classes == {"triangle"} and request.options.max_detections == 5


def test_json_b64_and_data_uri_decode_to_the_image():
    encoded = base64.b64encode(IMAGE).decode()
    assert parse({"body": json.dumps({"b64": encoded}).encode()}, "application/json").image == IMAGE
    data_uri = "data:image/png;base64," + encoded[:10] + "\n" + encoded[10:]
    assert parse({"body": json.dumps({"b64": data_uri}).encode()}, "application/json").image == IMAGE


def test_json_is_recognised_without_a_content_type():
    assert parse({"body": b'  {"url": "https://a.example/x.png"}'}).url == "https://a.example/x.png"


@pytest.mark.parametrize("fields, content_type, code", [
    ({"body": b""}, None, "empty_body"),
    ({}, None, "empty_body"),
    ({"data": b""}, None, "empty_body"),
    ({"body": b'{"url": '}, "application/json", "bad_json"),
    ({"body": b"[" * 100_000 + b"]" * 100_000}, "application/json", "bad_json"),
    ({"body": b'["https://a.example/x.png"]'}, "application/json", "bad_json"),
    ({"body": b'{"url": "https://a", "b64": "AAAA"}'}, "application/json", "bad_json"),
    ({"body": b'{}'}, "application/json", "bad_json"),
    ({"body": b'{"url": 42}'}, "application/json", "bad_json"),
    ({"body": b'{"b64": "not base64!"}'}, "application/json", "bad_base64"),
    ({"body": b'{"b64": "QUJ"}'}, "application/json", "bad_base64"),
    ({"body": b'{"b64": ""}'}, "application/json", "bad_json"),
    ({"body": b'{"url": "https://a.example/x", "colour": "red"}'}, "application/json", "unknown_option"),
    ({"body": b'{"url": "https://a.example/x", "threshold": 1.5}'}, "application/json", "bad_option"),
    ({"body": b'{"url": "https://a.example/x", "threshold": -0.1}'}, "application/json", "bad_option"),
    ({"body": b'{"url": "https://a.example/x", "threshold": "high"}'}, "application/json", "bad_option"),
    ({"body": b'{"url": "https://a.example/x", "threshold": true}'}, "application/json", "bad_option"),
    ({"body": b'{"url": "https://a.example/x", "threshold": {"a": {"b": 1}}}'}, "application/json", "bad_option"),
    ({"body": b'{"url": "https://a.example/x", "max_detections": 0}'}, "application/json", "bad_option"),
    ({"body": b'{"url": "https://a.example/x", "max_detections": 101}'}, "application/json", "bad_option"),
    ({"body": b'{"url": "https://a.example/x", "max_detections": 2.5}'}, "application/json", "bad_option"),
    ({"body": b'{"url": "https://a.example/x", "classes": ["dog"]}'}, "application/json", "bad_option"),
    ({"body": b'{"url": "https://a.example/x", "classes": []}'}, "application/json", "bad_option"),
    ({"body": b'{"url": "https://a.example/x", "classes": "circle"}'}, "application/json", None),
    ({"body": b'{"url": "https://a.example/x", "render": "maybe"}'}, "application/json", "bad_option"),
    ({"data": IMAGE, "threshold": b"NaN"}, None, "bad_option"),
    ({"data": IMAGE, "max_detections": b"\xff"}, None, "bad_option"),
])
def test_bad_requests_name_their_problem(fields, content_type, code):
    if code is None:  # a comma-separated string is accepted, as a form field would send it
        assert parse(fields, content_type).options.classes == {"circle"}
        return
    error = error_of(fields, content_type)
    assert error.code == code
    assert error.status == 400
    assert error.message and error.to_dict() == {"error": code, "message": error.message}


def test_unknown_class_error_lists_the_model_labels():
    error = error_of({"data": IMAGE, "classes": b"dog,circle"})
    assert '"dog"' in error.message and "circle, square, triangle" in error.message


def nested(depth: int) -> bytes:
    return b'{"url": "https://a.example/x", "threshold": ' + b"[" * depth + b"1" + b"]" * depth + b"}"


@pytest.mark.parametrize("body", [
    b'{"url": "https://a.example/x", "threshold": ' + b"9" * 400 + b"}",
    b'{"url": "https://a.example/x", "max_detections": -' + b"9" * 400 + b"}",
], ids=["threshold", "max_detections"])
def test_a_400_digit_integer_option_gets_a_short_bad_option(body):
    error = error_of({"body": body}, "application/json")
    assert error.code == "bad_option" and len(error.message) < 300


def test_an_option_nested_to_any_depth_gets_a_400():
    """Every depth up to past the recursion limit: the deepest that json.loads still accepts once
    broke the error message itself (where it lies depends on the stack already in use)."""
    for depth in range(1, 2 * sys.getrecursionlimit()):
        error = error_of({"body": nested(depth)}, "application/json")
        assert error.code in ("bad_option", "bad_json") and len(error.message) < 300, depth


def test_a_form_file_field_named_body_does_not_skip_the_options():
    error = error_of({"body": IMAGE, "threshold": b"banana"})
    assert error.code == "bad_option" and "threshold" in error.message
    assert parse({"body": IMAGE, "threshold": b"0.3"}).options.threshold == 0.3


def test_messages_quote_long_values_shortly():
    error = error_of({"body": b'{"url": "https://a.example/x", "render": "' + b"y" * 100_000 + b'"}'},
                     "application/json")
    assert error.code == "bad_option" and len(error.message) < 200
