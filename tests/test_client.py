"""objdetect-client without a detection server: results, the results file, sources, renders, COCO
ids, and retries against a loopback HTTP server that answers what TorchServe answers when busy."""

from __future__ import annotations

import io
import json
import struct
import threading
import time
from collections import Counter

import pytest
from PIL import Image

from objdetect_client import Client, Detection, Result, Retry
from objdetect_client import render, sources
from objdetect_client.coco import GroundTruth
from objdetect_client.results_file import ResultsFile, load
from objdetect_serving.torchserve import free_port

pytestmark = pytest.mark.unit

OK = Result("a.jpg", 64, 48, (Detection("circle", 1, 0.9, (1.0, 2.0, 11.0, 22.0)),), model="detector", version="2.0")
BUSY = {"code": 503, "type": "ServiceUnavailableException", "message": "Model \"detector\" has no worker"}
ANSWER = {"model": "detector", "version": "1.0", "width": 64, "height": 48,
          "detections": [{"label": "square", "class_id": 2, "score": 0.75, "box": [1, 2, 3, 4]}]}


def png(width: int = 64, height: int = 48, colour: str = "gray") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_result_round_trips_through_its_json_line():
    failed = Result("b.jpg", error="corrupt_image", message="truncated", status=400, request_id="r1")
    for result in (OK, failed):
        assert Result.from_json(json.loads(json.dumps(result.to_json()))) == result
    assert OK.to_json() == {"source": "a.jpg", "model": "detector", "version": "2.0", "width": 64, "height": 48, "detections": [
        {"label": "circle", "class_id": 1, "score": 0.9, "box": [1.0, 2.0, 11.0, 22.0]}]}


def test_only_failures_of_the_service_are_transient():
    assert [Result("x", error=e, status=s).transient for e, s in (
        ("connection_failed", None), ("timeout", None), ("ServiceUnavailableException", 503),
        ("InternalServerException", 507), ("corrupt_image", 400), ("unauthorized", 401),
        ("prediction_failed", 500), ("unreadable", None))] == [True, True, True, True, False, False, False, False]
    assert not OK.transient


def test_the_results_file_resumes_after_a_torn_line(tmp_path):
    path = tmp_path / "results.jsonl"
    with ResultsFile(path) as out:
        out.write(OK)
        out.write(Result("busy.jpg", error="ServiceUnavailableException", status=503))
        out.write(Result("bad.jpg", error="corrupt_image", status=400))
    path.write_text(path.read_text() + '{"source": "c.jpg", "wid')  # killed mid-write
    assert set(load(path)) == {"a.jpg", "busy.jpg", "bad.jpg"}
    with ResultsFile(path, resume=True) as out:
        assert out.done == {"a.jpg", "bad.jpg"}  # the 503 is sent again
        out.write(Result("busy.jpg", 64, 48))
    assert load(path)["busy.jpg"].ok and path.read_text().count("\n") == 4  # torn tail gone, one line added
    with ResultsFile(path) as out:  # without resume: a new file
        assert out.done == set()
    assert path.read_text() == ""


def test_a_corrupt_line_inside_the_file_is_an_error_not_skipped(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('not json\n' + json.dumps(OK.to_json()) + "\n")
    with pytest.raises(ValueError, match="results.jsonl:1"):
        load(path)


def test_folders_expand_recursively_by_extension_sorted_and_once(tmp_path):
    for name in ("b.JPG", "a.png", "sub/c.webp", "sub/deeper/d.tiff", "notes.txt", "sub/e.jpeg.bak"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = sources.expand([str(tmp_path), str(tmp_path / "a.png"), "https://example.com/x.jpg"])
    assert found == [str(tmp_path / n) for n in ("a.png", "b.JPG", "sub/c.webp", "sub/deeper/d.tiff")] + [
        "https://example.com/x.jpg"]
    with pytest.raises(sources.SourceError, match="no such file or folder"):
        sources.expand([str(tmp_path / "missing")])


def test_a_list_file_skips_blank_lines_and_comments(tmp_path):
    (tmp_path / "list.txt").write_text("# images\nhttps://a.example/1.jpg\n\n  s3://bucket/key.png \n")
    assert sources.read_list(str(tmp_path / "list.txt")) == ["https://a.example/1.jpg", "s3://bucket/key.png"]


def test_renders_draw_the_boxes_on_the_upright_image():
    image = Image.new("RGB", (40, 80), "white")
    exif = image.getexif()
    exif[0x0112] = 6  # stored sideways: shown rotated 90 degrees, 80x40
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif, quality=95)
    result = Result("photos/cat.jpg", 80, 40, (Detection("cat", 17, 0.9, (10.0, 10.0, 70.0, 30.0)),))
    drawn = Image.open(io.BytesIO(render.render(buffer.getvalue(), result)))
    assert drawn.size == (80, 40)
    assert drawn.getpixel((40, 30)) != (255, 255, 255) and drawn.getpixel((40, 20))[0] > 240  # edge drawn, inside not
    assert render.file_name("photos/cat.jpg") == "photos_cat.jpg.jpg"
    assert render.file_name("s3://bucket/a b/c.png") == "bucket_a_b_c.png.jpg"


def test_ground_truth_ids_by_the_longest_tail_of_the_path_and_categories_by_name(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": [{"id": 7, "file_name": "x.jpg"}, {"id": 8, "file_name": "sub/x.jpg"}],
                                "categories": [{"id": 40, "name": "circle"}], "annotations": []}))
    truth = GroundTruth(str(path))
    assert [truth.image_id(s) for s in ("/data/val/sub/x.jpg", "/data/val/x.jpg", "s3://b/sub/x.jpg", "y.jpg")] == [
        8, 7, 8, None]
    result = Result("val/x.jpg", 64, 48, (Detection("circle", 1, 0.9, (1.0, 2.0, 11.0, 22.0)),
                                          Detection("square", 2, 0.8, (0.0, 0.0, 5.0, 5.0))))
    assert truth.detections([result]) == [{"image_id": 7, "category_id": 40, "bbox": [1.0, 2.0, 10.0, 20.0],
                                           "score": 0.9}]


@pytest.fixture()
def scripted(http_server):
    """A loopback server answering POSTs from a script of (status, JSON body or None), then 200s;
    returns its URL and the bodies it received."""
    def start(*script):
        script, received = list(script), []

        def respond(method, path, headers, body):
            received.append(body)
            status, answer = script.pop(0) if script else (200, ANSWER)
            return status, json.dumps(answer).encode() if answer is not None else b"", "application/json"

        return http_server(respond), received

    return start


FAST = Retry(attempts=4, backoff_s=0.01, max_backoff_s=0.05)


def test_busy_and_worker_died_answers_are_retried_until_an_answer(scripted):
    url, received = scripted((503, BUSY), (507, {"code": 507, "type": "InternalServerException",
                                                 "message": "Worker died."}))
    result = Client(url, retry=FAST).detect(png(), name="a.png", threshold=0.3, classes=["square"])
    assert result == Result("a.png", 64, 48, (Detection("square", 2, 0.75, (1, 2, 3, 4)),), model="detector", version="1.0")
    assert len(received) == 3
    assert b'name="threshold"\r\n\r\n0.3' in received[0] and b'name="classes"\r\n\r\nsquare' in received[0]


def test_our_4xx_is_final_and_keeps_the_servers_code_and_message(scripted):
    url, received = scripted((400, {"error": "corrupt_image", "message": "truncated", "request_id": "r"}))
    result = Client(url, retry=FAST).detect(png(), name="a.png")
    assert (result.error, result.message, result.status) == ("corrupt_image", "truncated", 400)
    assert len(received) == 1


def test_a_body_that_is_not_json_is_named_by_its_status(scripted):
    url, received = scripted((413, None))  # TorchServe's frontend refuses an oversize body with an empty one
    result = Client(url, retry=FAST).detect(png(), name="a.png")
    assert (result.error, result.status) == ("http_413", 413) and len(received) == 1


def test_a_server_busy_for_longer_than_the_retries_gives_its_last_answer(scripted):
    url, received = scripted(*[(503, BUSY)] * 10)
    result = Client(url, retry=FAST).detect(png(), name="a.png")
    assert (result.error, result.status) == ("ServiceUnavailableException", 503) and len(received) == 4


def test_connection_errors_are_retried_then_reported():
    result = Client(f"http://127.0.0.1:{free_port()}", retry=FAST).detect(png(), name="a.png")
    assert result.error == "connection_failed" and result.status is None and result.transient


def test_backoff_grows_with_full_jitter_and_is_capped():
    retry = Retry(attempts=10, backoff_s=0.5, max_backoff_s=4)
    delays = [[retry.delay_s(attempt) for _ in range(200)] for attempt in range(1, 8)]
    assert all(0 <= d <= min(4, 0.5 * 2 ** (attempt - 1)) for attempt, row in enumerate(delays, 1) for d in row)
    assert max(delays[0]) > 0.4 and min(delays[0]) < 0.1  # spread over the whole window
    assert max(delays[6]) > 3.5


def test_an_unreadable_file_is_a_result_not_an_exception(tmp_path):
    result = Client("http://127.0.0.1:9", retry=FAST).detect(tmp_path / "gone.jpg")
    assert result.error == "unreadable" and result.source == str(tmp_path / "gone.jpg")


def test_many_images_are_answered_concurrently_each_after_one_retry(http_server, tmp_path):
    """Each image's first request is answered busy; each request takes a moment, long enough for
    every worker thread to have one in flight at once."""
    attempts, in_flight, most, options, lock = Counter(), [0], [0], [], threading.Lock()

    def respond(method, path, headers, body):
        options.append(b'name="max_detections"\r\n\r\n5' in body)
        ihdr = body.index(b"IHDR")  # which image: each has a width of its own
        width = struct.unpack(">I", body[ihdr + 4:ihdr + 8])[0]
        with lock:
            attempts[width] += 1
            first = attempts[width] == 1
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.1)
        with lock:
            in_flight[0] -= 1
        status, answer = (503, BUSY) if first else (200, ANSWER)
        return status, json.dumps(answer).encode(), "application/json"

    names = {}
    for i in range(12):
        names[64 + i] = str(tmp_path / f"img{i}.png")
        (tmp_path / f"img{i}.png").write_bytes(png(width=64 + i))
    client = Client(http_server(respond), retry=FAST)
    results = list(client.detect_many(list(names.values()), concurrency=4, max_detections=5))
    assert sorted(r.source for r in results) == sorted(names.values()) and all(r.ok for r in results)
    assert attempts == {width: 2 for width in names} and all(options)  # one busy answer, one retry, per image
    assert most[0] == 4
