"""The HTTP API of a real TorchServe on loopback, as clients use it: every form, option and refusal."""

import base64
import contextlib
import http.server
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

from objdetect import synthetic
from objdetect.synthetic import encode
from objdetect_serving.archive import build_mar
from objdetect_tools.workloads import ANSWER_KEYS

pytestmark = pytest.mark.integration


def predict(server, data=None, model="detector", **kwargs):
    return requests.post(f"{server.url()}/predictions/{model}", data=data, timeout=60, **kwargs)


def assert_detects(response, sample):
    """A 200 JSON answer whose size is the sample's and which finds each of its shapes."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == ANSWER_KEYS
    assert (body["width"], body["height"]) == sample.image.size
    assert sorted(d["label"] for d in body["detections"]) == sorted(sample.labels)
    scores = [d["score"] for d in body["detections"]]
    assert scores == sorted(scores, reverse=True)
    return body


@pytest.fixture(scope="module")
def sample():
    """A generated image (6 shapes) that the embedded model gets exactly right: these tests check
    the API, the mAP test checks accuracy."""
    return synthetic.generate(synthetic.SAMPLE_SEED)


def test_raw_body_put_as_curl_T_sends_it(server, sample):
    response = requests.put(f"{server.url()}/predictions/detector", data=encode(sample.image, "JPEG", quality=95),
                            timeout=60)
    body = assert_detects(response, sample)
    assert body["model"] == "detector" and body["version"] == "1.0"
    assert set(body["timings_ms"]) == {"decode", "transform", "predict", "postprocess", "total"}


def test_raw_body_post_with_its_content_type(server, sample):
    assert_detects(predict(server, encode(sample.image), headers={"Content-Type": "image/png"}), sample)


def test_multipart_form_file_field(server, sample):
    response = predict(server, files={"data": ("shapes.webp", encode(sample.image, "WEBP", lossless=True))})
    assert_detects(response, sample)


def test_multipart_form_with_option_fields(server, sample):
    response = predict(server, files={"image": ("shapes.png", encode(sample.image))},
                       data={"threshold": "0.01", "max_detections": "1"})
    assert response.status_code == 200, response.text
    assert len(response.json()["detections"]) == 1


def test_json_base64_with_class_filter(server, sample):
    keep = sample.labels[0]
    response = predict(server, json={"b64": base64.b64encode(encode(sample.image)).decode(), "classes": [keep]})
    assert response.status_code == 200
    labels = [d["label"] for d in response.json()["detections"]]
    assert labels == [keep] * sample.labels.count(keep)


def test_versioned_route_reaches_the_same_model(server, sample):
    response = requests.post(f"{server.url()}/predictions/detector/1.0", data=encode(sample.image), timeout=60)
    assert_detects(response, sample)


def test_render_returns_the_image_with_boxes_as_jpeg(server, sample):
    response = predict(server, json={"b64": base64.b64encode(encode(sample.image)).decode(), "render": True})
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/jpeg"
    drawn = Image.open(io.BytesIO(response.content))
    # Drawn at the resolution the model saw (512 px on the longer side for this model), same aspect.
    assert drawn.format == "JPEG" and max(drawn.size) == 512
    assert abs(drawn.size[0] / drawn.size[1] - sample.image.size[0] / sample.image.size[1]) < 0.01
    exact = predict(server, model="exact", json={"b64": base64.b64encode(encode(sample.image)).decode(), "render": True})
    assert Image.open(io.BytesIO(exact.content)).size == sample.image.size  # the exact path keeps every pixel


def test_exif_rotated_photo_gets_boxes_in_upright_pixels(server, sample):
    # Stored turned a quarter to the left, tagged "rotate 90 clockwise to view": upright it is the sample.
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = sample.image.transpose(Image.Transpose.ROTATE_90)
    response = predict(server, encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
    body = assert_detects(response, sample)
    for truth, label in zip(sample.boxes, sample.labels):
        assert any(d["label"] == label and all(abs(a - b) < 8 for a, b in zip(d["box"], truth))
                   for d in body["detections"])


def model_log_since(server, offset: int, expected: str, wait_s: float = 5.0) -> str:
    """What the workers logged after `offset` (bytes into model_log.log), waiting a moment for
    `expected` to appear: TorchServe's frontend writes the workers' lines as they reach it."""
    log = server.log_dir / "model_log.log"
    deadline = time.monotonic() + wait_s
    while True:
        with open(log, "rb") as file:
            file.seek(offset)
            text = file.read().decode(errors="replace")
        if expected in text or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def test_images_of_different_sizes_share_a_batch(server):
    """The test server's "detector" batches up to 4 requests within 300 ms (maxBatchDelay); 4
    concurrent requests of 4 sizes must share one forward pass and come back right, each with its
    own image's detections (TorchServe's stock handler fails such a batch)."""
    samples = [synthetic.generate(2_000_000_000 + i) for i in (6, 11, 13, 32)]
    assert len({s.image.size for s in samples}) == 4
    offset = (server.log_dir / "model_log.log").stat().st_size
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda s: predict(server, encode(s.image)), samples))
    for response, sample in zip(responses, samples):
        assert_detects(response, sample)
    ids = [response.headers["X-Request-Id"] for response in responses]
    for request_id in ids:  # each request's JSON log line names the forward pass it shared
        log = model_log_since(server, offset, request_id)
    lines = [json.loads(line[line.index("{"):]) for line in log.splitlines() if '{"request_id"' in line]
    assert {line["request_id"]: line["batch_size"] for line in lines if line["request_id"] in ids} == dict.fromkeys(ids, 4)


def first_half_of_a_jpeg(sample, _) -> bytes:
    whole = encode(sample.image, "JPEG")
    return whole[: len(whole) // 2]


BAD_INPUTS = {  # data, or what makes it from (the sample, png_header); headers; error code; status
    "empty body": (b"", {}, "empty_body", 400),
    "not an image": (b"this is not an image", {}, "not_an_image", 400),
    "truncated image": (first_half_of_a_jpeg, {}, "corrupt_image", 400),
    "zero-sized image": (lambda _, png_header: png_header(0, 0), {}, "not_an_image", 400),
    "pixel bomb": (lambda _, png_header: png_header(30000, 30000), {}, "image_too_large", 413),
    "bad base64": (b'{"b64": "%%%"}', {"Content-Type": "application/json"}, "bad_base64", 400),
    "malformed JSON": (b'{"url": "https://a', {"Content-Type": "application/json"}, "bad_json", 400),
    "deeply nested JSON": (b"[" * 50_000 + b"]" * 50_000, {"Content-Type": "application/json"}, "bad_json", 400),
    "unknown option": (b'{"url": "https://a.example/x", "colour": 1}', {"Content-Type": "application/json"},
                       "unknown_option", 400),
    "out-of-range option": (b'{"url": "https://a.example/x", "threshold": 7}', {"Content-Type": "application/json"},
                            "bad_option", 400),
}


def worker_pids(server):
    described = requests.get(f"{server.url('management')}/models/detector", timeout=10).json()
    return sorted(w["pid"] for m in described for w in m["workers"])


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_4xx_json_error_and_the_worker_keeps_serving(server, sample, png_header, case):
    data, headers, code, status = BAD_INPUTS[case]
    data = data(sample, png_header) if callable(data) else data
    pids = worker_pids(server)
    response = predict(server, data, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code and response.json()["message"]
    assert worker_pids(server) == pids  # no worker died and restarted
    assert predict(server, encode(sample.image)).status_code == 200


def test_a_panorama_strip_is_answered_in_its_own_pixels_not_refused(server, sample):
    """8000x20: padded to what the model can take (objdetect/transform.py), boxes clipped to it."""
    strip = Image.new("RGB", (8000, 20), "skyblue")
    strip.paste(sample.image.resize((26, 20)), (4000, 0))
    data = base64.b64encode(encode(strip, "JPEG", quality=95)).decode()
    response = predict(server, json={"b64": data, "threshold": 0.05})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (8000, 20)
    assert all(0 <= d["box"][0] < d["box"][2] <= 8000 and 0 <= d["box"][1] < d["box"][3] <= 20
               for d in body["detections"])


def test_a_bad_request_in_a_batch_does_not_fail_the_others(server, sample, png_header):
    good = encode(sample.image)
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda data: predict(server, data), [good, b"garbage", good, png_header(0, 0)]))
    assert [r.status_code for r in responses] == [200, 400, 200, 400]


@contextlib.contextmanager
def http_host(body: bytes):
    """An HTTP server on loopback answering every GET with `body`; yields its port and the paths
    it was asked for."""
    requested = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            requested.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    try:
        yield host.server_port, requested
    finally:
        host.shutdown()
        host.server_close()


@pytest.fixture(scope="module")
def local_image_host(sample):
    """An image on loopback, as on an attacker's or an operator's internal host: its port."""
    with http_host(encode(sample.image, "JPEG", quality=95)) as (port, _):
        yield port


@pytest.mark.parametrize("url, words", [
    ("http://127.0.0.1:{port}/photo.jpg", "loopback"),
    ("http://localhost:{port}/photo.jpg", "loopback"),
    ("http://2130706433:{port}/photo.jpg", "loopback"),
    ("http://0x7f000001:{port}/photo.jpg", "loopback"),
    ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "link-local"),
    ("http://169.254.170.2/v2/credentials", "link-local"),
    ("http://[::ffff:127.0.0.1]:{port}/photo.jpg", "wrapping 127.0.0.1"),
    ("file:///etc/passwd", "only http and https"),
])
def test_url_guard_refuses_local_and_metadata_addresses(server, local_image_host, url, words):
    response = predict(server, json={"url": url.format(port=local_image_host)})
    assert response.status_code == 400
    assert response.json()["error"] == "url_refused" and words in response.json()["message"]


def test_an_operator_can_trust_an_internal_host_and_require_api_keys(server, local_image_host, sample):
    """The "guarded" archive trusts 127.0.0.0/8, allows only host 127.0.0.1 and requires a key."""
    url = {"url": f"http://127.0.0.1:{local_image_host}/photo.jpg"}
    assert predict(server, model="guarded", json=url).status_code == 401
    assert predict(server, model="guarded", json=url, headers={"X-API-Key": "wrong"}).status_code == 401
    response = predict(server, model="guarded", json=url, headers={"Authorization": "Bearer test-key"})
    body = assert_detects(response, sample)
    assert "fetch" in body["timings_ms"]
    other_host = {"url": f"http://localhost:{local_image_host}/photo.jpg"}
    refused = predict(server, model="guarded", json=other_host, headers={"X-API-Key": "test-key"})
    assert refused.status_code == 400 and "allowed hosts" in refused.json()["message"]


def test_health_and_metrics_need_no_token(server):
    assert requests.get(f"{server.url()}/ping", timeout=10).json()["status"] == "Healthy"
    metrics = requests.get(f"{server.url('metrics')}/metrics", timeout=10)
    assert metrics.status_code == 200 and "ts_inference_requests_total" in metrics.text


@pytest.fixture(scope="module")
def archive_host(tmp_path_factory):
    """A real, loadable archive on loopback: its URL, and the paths the host was asked for."""
    folder = tmp_path_factory.mktemp("remote")
    archive = build_mar("shapes", folder, "evil", "1.0")
    with http_host(archive.read_bytes()) as (port, requested):
        yield f"http://127.0.0.1:{port}/{archive.name}", requested


def test_models_cannot_be_registered_from_remote_urls(server, archive_host):
    """allowed_urls (config.properties) admits only model_store files: TorchServe refuses a URL
    before fetching it, even one that serves a loadable archive (CVE-2023-43654, ShellTorch)."""
    local_url, requested = archive_host
    for url in ("https://example.com/evil.mar", local_url):
        response = requests.post(f"{server.url('management')}/models", params={"url": url}, timeout=30)
        assert response.status_code == 404, response.text  # TorchServe's status for a refused URL
        assert response.json()["message"] == f"Given URL {url} does not match any allowed URL(s)"
    assert requested == []  # never fetched
    assert "evil" not in requests.get(f"{server.url('management')}/models", timeout=10).text


# Hostile requests: each is answered on its own with a 4xx (or the right 200), and every worker
# that served before serves after.

def frontend_refusal(response, words):
    """A 400 from the frontend's own checks: TorchServe's JSON, naming the problem, quoting no body."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == 400 and words in body["message"] and "a&a" not in body["message"]


def test_a_20_mib_url_encoded_body_is_one_bad_request_not_the_end_of_the_server(server, sample):
    pids = worker_pids(server)
    response = predict(server, b"a&" * (10 * 1024 * 1024 - 1),
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400 and response.json()["error"] == "not_an_image"
    assert worker_pids(server) == pids
    assert_detects(predict(server, encode(sample.image)), sample)


def test_an_image_sent_as_curl_data_binary_labels_it_is_answered(server, sample):
    """curl --data-binary @photo.jpg says application/x-www-form-urlencoded: the API takes no such
    forms, so the body is the image."""
    response = predict(server, encode(sample.image, "JPEG", quality=95),
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_detects(response, sample)


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=", "multipart/form-data",
                                          "multipart/form-data; boundary=" + "b" * 71])
def test_a_multipart_body_without_a_usable_boundary_is_a_400(server, sample, content_type):
    frontend_refusal(predict(server, encode(sample.image), headers={"Content-Type": content_type}), "boundary")


@pytest.mark.parametrize("fields", [200, 100_000])
def test_a_multipart_form_of_too_many_fields_is_a_400(server, fields):
    parts = b"".join(b'--B\r\nContent-Disposition: form-data; name="f%d"\r\n\r\na&a\r\n' % i for i in range(fields))
    response = predict(server, parts + b"--B--\r\n", headers={"Content-Type": "multipart/form-data; boundary=B"})
    frontend_refusal(response, "TooManyFormFieldsException")


def worker_rss_mb(server) -> float:
    import psutil
    return sum(psutil.Process(pid).memory_info().rss for pid in worker_pids(server)) / 2**20


@pytest.mark.parametrize("size", [(1, 65500), (65500, 1)])
def test_a_one_pixel_sliver_costs_no_more_memory_than_a_photo(server, size):
    before = worker_rss_mb(server)
    response = predict(server, encode(Image.new("RGB", size, "white"), "JPEG"))
    assert response.status_code == 200 and (response.json()["width"], response.json()["height"]) == size
    assert worker_rss_mb(server) - before < 300  # 1x65500 once grew a worker by 8.2 GB


def test_a_jpeg_of_40000_scans_is_refused_quickly(server, sample):
    photo = encode(Image.new("RGB", (2000, 1500), "white"), "JPEG", progressive=True)
    last = photo.rindex(b"\xff\xda")
    bomb = photo[:last] + photo[last:-2] * 40_000 + b"\xff\xd9"
    pids = worker_pids(server)
    response = predict(server, bomb)
    assert response.status_code == 400 and response.json()["error"] == "corrupt_image"
    assert worker_pids(server) == pids


def test_a_rotated_tiff_is_answered_in_its_upright_size(server):
    stored = Image.new("RGB", (400, 640), "white")  # shown 640x400 once turned as orientation 6 says
    data = io.BytesIO()
    stored.save(data, "TIFF", tiffinfo={0x0112: 6})
    body = predict(server, data.getvalue()).json()
    assert (body["width"], body["height"]) == (640, 400)


@pytest.mark.parametrize("request_json, code", [
    ('{"url": "https://a.example/x.jpg", "threshold": ' + "9" * 400 + "}", "bad_option"),
    ('{"url": "https://a.example/x.jpg", "max_detections": ' + "9" * 400 + "}", "bad_option"),
    ('{"url": "https://a.example/x.jpg", "threshold": ' + "[" * 984 + "1" + "]" * 984 + "}", None),
    ('{"url": "http://\uff11\uff0e\uff11\uff0e\uff11\uff0e\uff11/a.jpg"}', "url_refused"),
], ids=["huge threshold", "huge max_detections", "threshold 984 deep", "fullwidth host"])
def test_hostile_json_gets_its_own_400_while_its_batch_is_answered(server, sample, request_json, code):
    good = encode(sample.image)
    with ThreadPoolExecutor(3) as pool:
        hostile = pool.submit(predict, server, request_json.encode(), headers={"Content-Type": "application/json"})
        others = [pool.submit(predict, server, good) for _ in range(2)]
    assert hostile.result().status_code == 400
    assert hostile.result().json()["error"] in ((code,) if code else ("bad_option", "bad_json"))
    for other in others:
        assert_detects(other.result(), sample)


def test_every_option_is_checked_whatever_the_image_field_is_called(server, sample):
    files = {"body": ("a.png", encode(sample.image), "image/png")}
    refused = predict(server, files=files, data={"threshold": "banana"})
    assert refused.status_code == 400 and refused.json()["error"] == "bad_option"
    assert_detects(predict(server, files=files, data={"threshold": "0.5"}), sample)
