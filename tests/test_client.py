"""objdetect-client without a detection server: results, the results file, sources, renders, COCO
ids, retries against a loopback HTTP server that answers what TorchServe answers when busy, and the
command line's conventions (options checked before anything is sent, an unreachable service found
at once, exit statuses, help on every option) against loopback servers that answer as the service."""

from __future__ import annotations

import argparse
import functools
import io
import json
import re
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from objdetect_client import Client, Detection, Result, Retry, Unreachable, cli
from objdetect_client import render, sources
from objdetect_client.client import normalize_endpoint
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


def test_connection_errors_are_retried_then_reported_in_a_few_words():
    url = f"http://127.0.0.1:{free_port()}"
    result = Client(url, retry=FAST).detect(png(), name="a.png")
    assert result.error == "connection_failed" and result.status is None and result.transient
    assert result.message == f"cannot reach {url}: connection refused"  # not urllib3's pools and objects
    assert Client("http://nothing.invalid:8080", retry=FAST).detect(png()).message == (
        "cannot reach http://nothing.invalid:8080: no such host")


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


# The command line, in this process, against loopback servers that answer as the service does.

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def fast_retries(monkeypatch):
    """The CLI's retry policy with millisecond backoffs: the same tries, without seconds of waiting."""
    monkeypatch.setattr(cli, "Retry", functools.partial(Retry, backoff_s=0.01, max_backoff_s=0.05))


@pytest.fixture()
def service(http_server):
    """A loopback server answering as the service: GET /ping from `pings` (statuses, then 200), and
    predictions with ANSWER, or with `predict(body) -> (status, answer)`. Returns its URL and the
    (method, path) of every request it got."""
    def start(pings=(), predict=None):
        pings, seen = list(pings), []

        def respond(method, path, headers, body):
            seen.append((method, path))
            if method == "GET" and path == "/ping":
                status = pings.pop(0) if pings else 200
                return status, json.dumps({"status": "Healthy" if status == 200 else "Unhealthy"}).encode(), \
                    "application/json"
            status, answer = predict(body) if predict else (200, ANSWER)
            return status, json.dumps(answer).encode(), "application/json"

        return http_server(respond), seen

    return start


def images(folder: Path, count: int) -> list[str]:
    """`count` PNGs in folder, each of its own width; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"img{i:02}.png").write_bytes(png(width=64 + i))
    return [str(folder / f"img{i:02}.png") for i in range(count)]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """cli.main in this process: its status, stdout and stderr. argparse's usage errors exit; that is status 2."""
    try:
        status = cli.main(list(argv))
    except SystemExit as exit:
        status = exit.code
    except KeyboardInterrupt:  # one main let through: a failure of this test, not the end of the session
        status = "KeyboardInterrupt"
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_every_option_of_every_command_has_help():
    parser = cli._parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    parsers = [parser, *commands.choices.values()]
    assert len(parsers) == 3
    for each in parsers:
        for action in each._actions:
            assert action.help and action.help != argparse.SUPPRESS, (each.prog, action.dest)
    assert all(command.help for command in commands._choices_actions)


def test_help_lists_the_exit_statuses_and_the_environment(capsys):
    for argv in ([], ["detect"], ["evaluate"]):
        status, out, _ = run(capsys, *argv, "--help")
        assert status == 0
        for code, meaning in ((0, "every image answered"), (1, "refused"), (2, "usage"), (3, "unreachable"),
                              (130, "interrupted")):
            assert re.search(rf"^  {code} +.*{meaning}", out, re.MULTILINE), (argv, code)
        assert "OBJDETECT_ENDPOINT" in out and "OBJDETECT_API_KEY" in out


def test_the_reference_names_every_option_and_exit_status():
    """docs/client.md is the client's full reference: an option the parser has and it lacks fails here."""
    text = (ROOT / "docs" / "client.md").read_text()
    parser = cli._parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    options = {option for each in [parser, *commands.choices.values()] for action in each._actions
               for option in action.option_strings if option.startswith("--") and option != "--help"}
    assert {option for option in options if f"`{option}" not in text} == set()
    for code in (cli.OK, cli.REFUSED, cli.USAGE, cli.UNREACHABLE, cli.INTERRUPTED):
        assert re.search(rf"^\| `?{code}`? \|", text, re.MULTILINE), code
    for variable in (cli.ENDPOINT_ENV, cli.API_KEY_ENV):
        assert variable in text


def test_version_is_the_clients_and_model_version_picks_the_models(service, tmp_path, capsys):
    import objdetect_client

    status, out, _ = run(capsys, "--version")
    assert status == 0 and out == f"objdetect-client {objdetect_client.__version__}\n"
    url, seen = service()
    (image,) = images(tmp_path, 1)
    status, out, err = run(capsys, "detect", image, "--endpoint", url, "--model-version", "2.0", "--quiet")
    assert status == 0, err
    assert seen == [("GET", "/ping"), ("POST", "/predictions/detector/2.0")]
    assert json.loads(out)["version"] == "1.0"  # each line keeps who answered, as the server said
    status, _, err = run(capsys, "detect", image, "--endpoint", url, "--version", "2.0")
    assert status == 2 and "unrecognized arguments: --version" in err


def test_an_endpoint_without_a_scheme_is_http_and_the_environment_sets_the_default(service, tmp_path, capsys,
                                                                                   monkeypatch):
    assert normalize_endpoint("localhost:8080") == "http://localhost:8080"
    assert normalize_endpoint("https://alb.example.com/") == "https://alb.example.com"
    for bad in ("ftp://host", "http://", "localhost:port", "http://host:8080?x=1", ""):
        with pytest.raises(ValueError):
            normalize_endpoint(bad)
    url, seen = service()
    (image,) = images(tmp_path, 1)
    status, out, err = run(capsys, "detect", image, "--endpoint", url.removeprefix("http://"), "--quiet")
    assert status == 0 and json.loads(out)["detections"], err
    monkeypatch.setenv("OBJDETECT_ENDPOINT", url.removeprefix("http://"))
    status, out, err = run(capsys, "detect", image, "--quiet")  # no --endpoint
    assert status == 0 and json.loads(out)["detections"], err
    assert seen.count(("POST", "/predictions/detector")) == 2
    monkeypatch.setenv("OBJDETECT_ENDPOINT", "ftp://nowhere")
    assert run(capsys, "detect", image)[0] == 2  # a bad default is a usage error too


@pytest.mark.parametrize("option", [
    ["--threshold", "1.5"], ["--threshold", "-0.1"], ["--threshold", "nan"], ["--concurrency", "0"],
    ["--timeout", "0"], ["--timeout", "-1"], ["--timeout", "inf"], ["--retries", "-1"], ["--max-detections", "0"],
    ["--max-connection-failures", "0"], ["--classes", ","], ["--endpoint", "ftp://host"], ["--resume"],
    ["--coco-out", "c.json"], ["--concurrency", "four"]])
def test_a_bad_option_is_a_usage_error_before_anything_is_sent(service, tmp_path, capsys, option):
    url, seen = service()
    (image,) = images(tmp_path, 1)
    status, out, err = run(capsys, "detect", image, "--endpoint", url, *option)
    assert status == 2 and "error:" in err and out == "", err
    assert seen == []


def test_an_unreachable_endpoint_exits_3_at_once_with_one_line(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    out_file = tmp_path / "results.jsonl"
    out_file.write_text(json.dumps(OK.to_json()) + "\n")  # an earlier run's results stay as they were
    started = time.monotonic()
    status, out, err = run(capsys, "detect", *images(tmp_path / "photos", 3), "--endpoint", url, "--out",
                           str(out_file))
    assert status == 3 and time.monotonic() - started < 2
    assert err == f"objdetect-client: cannot reach {url}: is the server running? (make serve)\n" and out == ""
    assert load(out_file) == {"a.jpg": OK}


@pytest.mark.parametrize("pings, answered", [([503, 503], True), ([503] * 10, False)])
def test_a_ping_answered_503_is_reachable_and_waited_for_by_the_retry_policy(service, tmp_path, capsys, fast_retries,
                                                                             pings, answered):
    """TorchServe's /ping says 503 while models load: the run waits for it (up to --retries), then
    sends either way, and the images' own retries take over."""
    url, seen = service(pings=pings)
    (image,) = images(tmp_path, 1)
    status, out, err = run(capsys, "detect", image, "--endpoint", url, "--retries", "3", "--quiet")
    assert status == 0 and json.loads(out)["detections"], err
    assert seen.count(("GET", "/ping")) == (3 if answered else 4) and seen[-1] == ("POST", "/predictions/detector")


@pytest.fixture()
def vanishing_service():
    """A service that answers /ping and its first `answers` predictions, then stops listening, as a
    server that goes away during a run: every later connection is refused. Returns its URL."""
    servers = []

    def start(answers: int) -> str:
        count, lock = [0], threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.answer({"status": "Healthy"})

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    count[0] += 1
                    if count[0] == answers:  # closed before this answer: the next request is refused
                        server.shutdown()
                        server.server_close()
                self.answer(ANSWER)

            def answer(self, body):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.server_close()


def test_a_run_stops_after_n_images_in_a_row_get_no_answer(vanishing_service, tmp_path, capsys, fast_retries):
    url = vanishing_service(answers=3)
    names, out_file = images(tmp_path / "photos", 40), tmp_path / "results.jsonl"
    started = time.monotonic()
    status, out, err = run(capsys, "detect", *names, "--endpoint", url, "--out", str(out_file), "--concurrency", "1",
                           "--max-connection-failures", "4", "--quiet")
    assert status == 3 and time.monotonic() - started < 10
    lines = err.splitlines()
    assert lines[-1] == f"objdetect-client: cannot reach {url} (4 images in a row got no answer): is the server " \
                        "running? (make serve)"
    assert "7 images in" in lines[-2] and "3 ok, 4 failed (connection_failed: 4); stopped with 33 not sent: " \
                                          "--resume sends them" in lines[-2]
    assert lines[:-2] == [f"objdetect-client: {name}: connection_failed: cannot reach {url}: connection refused"
                          for name in names[3:7]]  # one line per failed image, in a few words
    results = load(out_file)
    assert [r.ok for r in results.values()] == [True] * 3 + [False] * 4 and all(
        r.transient for r in results.values() if not r.ok)  # --resume sends them again


class SteadyRetry(Retry):
    def delay_s(self, attempt: int) -> float:
        return self.backoff_s


def test_the_library_gives_up_too_and_cuts_the_backoff_short():
    """Client.detect_many with give_up_after: Unreachable after that many results in a row, and the
    images already started stop their backoff rather than wait it out (each image here: two waits
    of 1.5 s; the first two fail at 3 s, and the next two would end at 6 s)."""
    url = f"http://127.0.0.1:{free_port()}"
    client = Client(url, retry=SteadyRetry(attempts=3, backoff_s=1.5))
    seen, started = [], time.monotonic()
    with pytest.raises(Unreachable, match=f"cannot reach {re.escape(url)} \\(2 images in a row"):
        for result in client.detect_many([png()] * 20, concurrency=2, give_up_after=2):
            seen.append(result)
    assert len(seen) == 2 and all(r.error == "connection_failed" for r in seen)
    assert time.monotonic() - started < 4.5


def test_each_failed_image_is_one_line_naming_its_error_and_the_status_says_refused(service, tmp_path, capsys):
    def predict(body):
        if b"IHDR\x00\x00\x00\x41" in body:  # the image 65 pixels wide
            return 400, {"error": "corrupt_image", "message": "broken\nJPEG data", "request_id": "r"}
        return 200, ANSWER

    url, _ = service(predict=predict)
    names = images(tmp_path, 3)
    status, out, err = run(capsys, "detect", *names, "--endpoint", url, "--quiet")
    assert status == 1 and len(out.splitlines()) == 3
    lines = err.splitlines()
    assert lines[0] == f"objdetect-client: {names[1]}: corrupt_image (400): broken JPEG data"
    assert len(lines) == 2 and "2 ok, 1 failed (corrupt_image: 1)" in lines[1]


def test_ctrl_c_before_anything_is_sent_exits_130(tmp_path, capsys, monkeypatch):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Client, "check", interrupted)
    status, _, err = run(capsys, "detect", *images(tmp_path, 1))
    assert status == 130 and err == "objdetect-client: interrupted\n"


def test_evaluate_prints_only_its_summary_on_stdout(service, tmp_path, capsys):
    """`objdetect-client evaluate ... | jq .mAP`: per-image results go to --out, tables to stderr."""
    url, _ = service()
    names = images(tmp_path / "val", 2)
    truth = {"images": [{"id": i, "file_name": Path(name).name, "width": 64 + i, "height": 48}
                        for i, name in enumerate(names)],
             "categories": [{"id": 5, "name": "square"}],
             "annotations": [{"id": i + 1, "image_id": i, "category_id": 5, "bbox": [1, 2, 2, 2], "area": 4,
                              "iscrowd": 0} for i in range(2)]}
    (tmp_path / "instances.json").write_text(json.dumps(truth))
    common = ["evaluate", "--annotations", str(tmp_path / "instances.json"), "--images", str(tmp_path / "val"),
              "--endpoint", url, "--quiet"]
    for extra in ([], ["--out", str(tmp_path / "r.jsonl")]):
        status, out, err = run(capsys, *common, *extra)
        assert status == 0, err
        assert json.loads(out) == {"images": 2, "failed": 0, "mAP": 1.0, "mAP_50": 1.0, "mAP_75": 1.0}
        assert "Average Precision" in err
    assert set(load(tmp_path / "r.jsonl")) == set(names)
