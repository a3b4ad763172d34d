"""objdetect-client against a real TorchServe on loopback: folders with good and bad files, an
interrupted run resumed, COCO results read back by pycocotools and mAP checked against torchmetrics,
retries through a server that answers 503 first, URL lists with an API key, s3:// against moto, and
the console script's conventions (the endpoint from the environment, an unreachable one)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import requests
import torch
from PIL import Image
from pycocotools.coco import COCO
from torchvision.ops import box_iou

from objdetect import synthetic
from objdetect_client.results_file import load
from objdetect_serving.torchserve import free_port
from objdetect_tools.training import map_at_50

pytestmark = pytest.mark.integration

CLIENT = Path(sys.executable).with_name("objdetect-client")  # the console script pip installed
SEED = 3_000_000_000
BUSY = {"code": 503, "type": "ServiceUnavailableException", "message": "Model \"detector\" has no worker"}


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLIENT), *args], capture_output=True, text=True, timeout=timeout)


def write_images(folder: Path, names: list[str], first_seed: int = SEED) -> dict[str, synthetic.Sample]:
    """Generated images under folder/<name> (PNG or JPEG by extension); returns each one's sample."""
    samples = {}
    for i, name in enumerate(names):
        sample = synthetic.generate(first_seed + i)
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(synthetic.encode(sample.image, "JPEG", quality=95) if name.endswith(".jpg")
                         else synthetic.encode(sample.image))
        samples[str(path)] = sample
    return samples


def test_a_folder_with_good_and_bad_files_gets_one_line_each_and_renders(server, tmp_path):
    samples = write_images(tmp_path / "photos", ["a.png", "b.jpg", "nested/c.png", "nested/deeper/d.jpg"])
    good = (tmp_path / "photos" / "b.jpg").read_bytes()
    (tmp_path / "photos" / "nested" / "corrupt.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "photos" / "fake.png").write_bytes(b"not an image at all")
    (tmp_path / "photos" / "notes.txt").write_text("not sent: not an image extension")
    out, renders = tmp_path / "results.jsonl", tmp_path / "renders"
    run = cli("detect", str(tmp_path / "photos"), "--endpoint", server.url(), "--out", str(out),
              "--render", str(renders), "--threshold", "0.3", "--quiet")
    assert run.returncode == 1, run.stderr  # some images failed
    assert "6 images in" in run.stderr and "4 ok, 2 failed" in run.stderr
    failed_lines = sorted(line for line in run.stderr.splitlines() if "images in" not in line)
    assert len(failed_lines) == 2  # one line per failed image, naming its error
    assert failed_lines[0].startswith(f"objdetect-client: {tmp_path / 'photos/fake.png'}: not_an_image (400): ")
    assert failed_lines[1].startswith(
        f"objdetect-client: {tmp_path / 'photos/nested/corrupt.jpg'}: corrupt_image (400): ")
    results = load(out)
    assert len(out.read_text().splitlines()) == 6 and len(results) == 6
    for path, sample in samples.items():
        result = results[path]
        assert result.ok and (result.width, result.height) == sample.image.size, result
        assert (result.model, result.version) == ("detector", "1.0")  # who answered, from the server's answer
        assert result.detections and {d.label for d in result.detections} <= set(synthetic.SHAPE_CLASSES)
        assert all(d.score >= 0.3 for d in result.detections)
        with Image.open(renders / f"{str(path).strip('/').replace('/', '_')}.jpg") as render:
            assert render.size == sample.image.size and render.format == "JPEG"
    corrupt, fake = results[str(tmp_path / "photos/nested/corrupt.jpg")], results[str(tmp_path / "photos/fake.png")]
    assert (corrupt.error, corrupt.status) == ("corrupt_image", 400) and corrupt.request_id
    assert (fake.error, fake.status) == ("not_an_image", 400)
    assert len(list(renders.iterdir())) == 4  # failures are not rendered


def test_an_interrupted_run_resumes_where_it_stopped(server, tmp_path):
    write_images(tmp_path / "photos", [f"img{i:02}.png" for i in range(16)])
    out = tmp_path / "results.jsonl"
    command = [str(CLIENT), "detect", str(tmp_path / "photos"), "--endpoint", server.url(), "--out", str(out),
               "--concurrency", "1", "--quiet"]
    # SIGINT at its default, as a terminal's job has it: a shell that runs this suite in the
    # background without job control starts it with SIGINT ignored, which every child inherits.
    first = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out.exists() and out.read_text().count("\n") >= 3):
        assert first.poll() is None and time.monotonic() < deadline, "the first run ended before it was interrupted"
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)  # Ctrl-C
    assert first.wait(timeout=60) == 130
    assert "--resume sends them" in first.stderr.read()
    before = out.read_text()
    done = len(before.splitlines())
    assert 3 <= done < 16

    second = cli(*command[1:], "--resume")
    assert second.returncode == 0, second.stderr
    assert f"{16 - done} images in" in second.stderr and f"{done} already in" in second.stderr
    lines = out.read_text().splitlines()
    assert out.read_text().startswith(before)  # what the first run recorded stays
    assert sorted(json.loads(line)["source"] for line in lines) == sorted(
        str(tmp_path / "photos" / f"img{i:02}.png") for i in range(16))  # each image once
    assert all(result.ok for result in load(out).values())


def test_evaluate_measures_map_with_pycocotools_and_writes_coco_results(server, tmp_path):
    """Category ids differ from the model's class ids (matched by name), and image ids are the
    ground truth's; the mAP@0.5 agrees with torchmetrics' over the same answers."""
    names = [f"val/{i:03}.jpg" for i in range(30)]
    samples = write_images(tmp_path / "images", names)
    category_ids = {label: 11 + i for i, label in enumerate(synthetic.SHAPE_CLASSES)}
    truth = {"images": [], "annotations": [],
             "categories": [{"id": i, "name": label} for label, i in category_ids.items()]}
    for image_id, (name, sample) in enumerate(zip(names, samples.values()), 100):
        truth["images"].append({"id": image_id, "file_name": name, "width": sample.image.width,
                                "height": sample.image.height})
        for (x1, y1, x2, y2), label in zip(sample.boxes, sample.labels):
            truth["annotations"].append({"id": len(truth["annotations"]) + 1, "image_id": image_id, "iscrowd": 0,
                                         "category_id": category_ids[label], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                         "area": (x2 - x1) * (y2 - y1)})
    annotations, coco_out, out = tmp_path / "instances.json", tmp_path / "detections.json", tmp_path / "r.jsonl"
    annotations.write_text(json.dumps(truth))
    run = cli("evaluate", "--annotations", str(annotations), "--images", str(tmp_path / "images"),
              "--endpoint", server.url(), "--coco-out", str(coco_out), "--out", str(out), "--quiet")
    assert run.returncode == 0, run.stderr
    metrics = json.loads(run.stdout)  # the summary alone: `| jq .mAP` works
    assert metrics["images"] == 30 and metrics["failed"] == 0 and metrics["mAP_50"] >= 0.9, metrics
    assert "Average Precision" in run.stderr  # pycocotools' table

    detections = COCO(str(annotations)).loadRes(str(coco_out))  # pycocotools reads it back
    assert detections.getImgIds() and set(detections.getImgIds()) <= set(range(100, 130))
    assert {a["category_id"] for a in detections.dataset["annotations"]} <= set(category_ids.values())

    results = load(out)
    answers = [{"boxes": torch.tensor([d.box for d in results[path].detections]).reshape(-1, 4),
                "scores": torch.tensor([d.score for d in results[path].detections]),
                "labels": torch.tensor([d.class_id for d in results[path].detections], dtype=torch.int64)}
               for path in samples]
    assert abs(map_at_50(answers, samples.values()) - metrics["mAP_50"]) <= 0.01


def busy_first_proxy(http_server, target: str, busy: int) -> tuple[str, list]:
    """A server that answers its first `busy` POSTs as TorchServe does with a full queue (503), then
    forwards them to `target`; returns its URL and a list that grows by one per request."""
    seen = []

    def respond(method, path, headers, body):
        if method == "GET":  # the client's /ping before it sends: passed through, not counted
            answer = requests.get(target + path, timeout=60)
            return answer.status_code, answer.content, answer.headers["Content-Type"]
        seen.append(path)
        if len(seen) <= busy:
            return 503, json.dumps(BUSY).encode(), "application/json"
        answer = requests.post(target + path, data=body, headers={"Content-Type": headers["Content-Type"]},
                               timeout=60)
        return answer.status_code, answer.content, answer.headers["Content-Type"]

    return http_server(respond), seen


@pytest.mark.parametrize("busy, retries, answered", [(2, 3, True), (5, 1, False)])
def test_retries_carry_a_request_through_a_server_that_answers_503_first(server, http_server, tmp_path, busy,
                                                                         retries, answered):
    write_images(tmp_path, ["a.png"])
    url, seen = busy_first_proxy(http_server, server.url(), busy)
    run = cli("detect", str(tmp_path / "a.png"), "--endpoint", url, "--retries", str(retries), "--quiet")
    result = json.loads(run.stdout)
    assert len(seen) == (busy + 1 if answered else retries + 1)
    if answered:
        assert run.returncode == 0 and result["detections"], run.stderr
    else:
        assert run.returncode == 1 and (result["error"], result["status"]) == ("ServiceUnavailableException", 503)


@pytest.fixture()
def image_host(http_server, tmp_path):
    """Serves tmp_path/site over HTTP on loopback (which the "guarded" model's operator trusts)."""
    site = tmp_path / "site"
    site.mkdir()

    def respond(method, path, headers, body):
        file = site / path.lstrip("/")
        return (200, file.read_bytes(), "image/*") if file.is_file() else (404, b"", "text/plain")

    return site, http_server(respond)


def test_a_url_list_with_an_api_key_and_options(server, image_host, tmp_path):
    site, url = image_host
    samples = write_images(site, ["a.png", "b.jpg"])  # squares and triangles; two circles
    listing = tmp_path / "urls.txt"
    listing.write_text(f"# two images and a missing one\n{url}/a.png\n{url}/b.jpg\n{url}/gone.png\n")
    common = ["detect", "--list", str(listing), "--endpoint", server.url(), "--model", "guarded", "--quiet"]
    run = cli(*common, "--api-key", "test-key", "--max-detections", "1", "--classes", "circle,triangle",
              "--threshold", "0.1")
    results = {r["source"]: r for r in map(json.loads, run.stdout.splitlines())}
    assert run.returncode == 1 and len(results) == 3, run.stderr
    for name, label in (("a.png", "triangle"), ("b.jpg", "circle")):  # a.png's squares are not asked for
        (found,) = results[f"{url}/{name}"]["detections"]
        sample = samples[str(site / name)]
        shapes = torch.tensor([box for box, shape in zip(sample.boxes, sample.labels) if shape == label])
        assert found["label"] == label and box_iou(shapes, torch.tensor([found["box"]])).max() >= 0.5, found
    assert results[f"{url}/gone.png"]["error"] == "url_fetch_failed"
    unauthorized = cli(*common)  # no key
    assert {json.loads(line)["error"] for line in unauthorized.stdout.splitlines()} == {"unauthorized"}


def test_an_s3_prefix_is_read_with_the_users_credentials(server, aws, tmp_path):
    """moto on loopback stands in for S3; boto3 finds it through AWS_ENDPOINT_URL, as a user's own
    configuration would point it at S3."""
    samples = write_images(tmp_path, ["a.png", "sub/b.jpg", "c.png"])
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="photos")
    for key, path in (("batch/a.png", "a.png"), ("batch/sub/b.jpg", "sub/b.jpg"), ("other/c.png", "c.png")):
        s3.put_object(Bucket="photos", Key=key, Body=(tmp_path / path).read_bytes())
    s3.put_object(Bucket="photos", Key="batch/readme.txt", Body=b"not an image")
    out = tmp_path / "results.jsonl"
    run = cli("detect", "s3://photos/batch/", "--endpoint", server.url(), "--out", str(out), "--render",
              str(tmp_path / "renders"), "--quiet")
    assert run.returncode == 0, run.stderr
    results = load(out)
    assert set(results) == {"s3://photos/batch/a.png", "s3://photos/batch/sub/b.jpg"}
    assert (results["s3://photos/batch/a.png"].width, results["s3://photos/batch/a.png"].height) == \
        samples[str(tmp_path / "a.png")].image.size
    assert sorted(p.name for p in (tmp_path / "renders").iterdir()) == ["photos_batch_a.png.jpg",
                                                                        "photos_batch_sub_b.jpg.jpg"]


def test_the_client_runs_without_torch(server, tmp_path):
    write_images(tmp_path, ["a.png"])
    arguments = ["detect", str(tmp_path / "a.png"), "--endpoint", server.url(), "--quiet"]
    program = ("import sys; sys.modules['torch'] = sys.modules['torchvision'] = None\n"
               f"from objdetect_client import cli\nsys.exit(cli.main({arguments!r}))")
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["detections"]


def test_the_endpoint_comes_from_the_environment_without_a_scheme(server, tmp_path):
    write_images(tmp_path, ["a.png"])
    endpoint = server.url().removeprefix("http://")
    run = subprocess.run([str(CLIENT), "detect", str(tmp_path / "a.png"), "--model-version", "1.0", "--quiet"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OBJDETECT_ENDPOINT": endpoint})
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["detections"] and (result["model"], result["version"]) == ("detector", "1.0")
    missing = cli("detect", str(tmp_path / "a.png"), "--model-version", "9.9", "--endpoint", endpoint, "--quiet")
    assert missing.returncode == 1 and json.loads(missing.stdout)["status"] == 404, missing.stderr


def test_an_unreachable_endpoint_exits_3_at_once(tmp_path):
    write_images(tmp_path, ["a.png"])
    endpoint = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    run = cli("detect", str(tmp_path / "a.png"), "--endpoint", endpoint)
    assert run.returncode == 3 and time.monotonic() - started < 10
    assert run.stderr == f"objdetect-client: cannot reach {endpoint}: is the server running? (make serve)\n"
