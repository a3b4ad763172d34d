"""Models and weights: verified downloads into the cache, fine-tuned checkpoints, and their archives."""

import functools
import hashlib
import http.server
import json
import threading
import zipfile
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from build_mar import build_mar
from conftest import encode
from objdetect import registry
from objdetect.pipeline import Detector, Request
from objdetect.settings import Settings


@pytest.fixture()
def weights_server(tmp_path):
    """A local stand-in for download.pytorch.org serving files from a folder."""
    folder = tmp_path / "published"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def hub_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def publish(folder, base_url, content: bytes, prefix: str | None = None):
    """Publishes `content` as torchvision does: the file name carries its SHA-256 prefix."""
    prefix = prefix or hashlib.sha256(content).hexdigest()[:8]
    name = f"model-{prefix}.pth"
    (folder / name).write_bytes(content)
    weights = SimpleNamespace(url=f"{base_url}/{name}", meta={"categories": ["__background__", "thing"]})
    return registry.Architecture("fake", registry.build_shapes_detector, weights, "a test architecture")


def test_published_weights_are_downloaded_verified_and_then_served_from_cache(weights_server, hub_dir):
    folder, url = weights_server
    arch = publish(folder, url, b"weights" * 1000)
    path = registry.published_weights(arch)
    assert path.parent == hub_dir and path.read_bytes() == b"weights" * 1000
    (folder / path.name).unlink()  # the origin is gone: the cache must answer alone
    assert registry.published_weights(arch, download=False) == path


def test_a_download_that_does_not_match_its_hash_is_rejected_and_not_cached(weights_server, hub_dir):
    folder, url = weights_server
    arch = publish(folder, url, b"tampered weights", prefix="00000000")
    with pytest.raises(ValueError, match="expected one starting 00000000"):
        registry.published_weights(arch)
    assert not any(hub_dir.iterdir())  # neither the file nor a partial download stays


def test_a_corrupted_cache_file_is_refused(weights_server, hub_dir):
    folder, url = weights_server
    arch = publish(folder, url, b"good weights")
    path = registry.published_weights(arch)
    path.write_bytes(b"bit rot")
    with pytest.raises(ValueError, match="SHA-256"):
        registry.published_weights(arch)


def test_missing_weights_without_download_say_where_they_were_looked_for(hub_dir):
    arch = registry.architecture("fasterrcnn_mobilenet_v3_large_fpn")
    with pytest.raises(FileNotFoundError, match="fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth"):
        registry.published_weights(arch, download=False)


def test_every_registered_architecture_builds_for_its_labels():
    for name, arch in registry.ARCHITECTURES.items():
        labels = arch.labels()
        assert labels[0] == registry.BACKGROUND
        if arch.coco_weights is not None:
            assert len(labels) == 91 and "person" in labels


def test_labels_files_and_checkpoint_formats(tmp_path):
    (tmp_path / "labels.txt").write_text("cat\n\ndog\n")
    assert registry.read_labels(tmp_path / "labels.txt") == ["__background__", "cat", "dog"]
    (tmp_path / "twice.txt").write_text("cat\ncat\n")
    with pytest.raises(ValueError, match="repeats"):
        registry.read_labels(tmp_path / "twice.txt")
    # torchvision's reference training saves {"model": state_dict, ...}; DDP prefixes "module."
    torch.save({"model": {"module.w": torch.ones(2, dtype=torch.float16)}, "epoch": 3}, tmp_path / "ckpt.pth")
    state = registry.load_state_dict(tmp_path / "ckpt.pth")
    assert list(state) == ["w"] and state["w"].dtype == torch.float32


def test_a_checkpoint_that_does_not_fit_the_architecture_fails_at_build(tmp_path):
    torch.save({"backbone.nonsense": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(RuntimeError, match="state_dict"):
        build_mar("fasterrcnn_mobilenet_v3_large_320_fpn", tmp_path, weights=tmp_path / "wrong.pt")


def test_a_fine_tuned_checkpoint_with_labels_becomes_a_working_archive(tmp_path):
    torch.manual_seed(0)
    model = registry.architecture("fasterrcnn_mobilenet_v3_large_320_fpn").build(num_classes=3)
    torch.save({"model": model.state_dict()}, tmp_path / "finetuned.pth")
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    archive = build_mar("fasterrcnn_mobilenet_v3_large_320_fpn", tmp_path / "store", "pets", "2.0",
                        weights=tmp_path / "finetuned.pth", labels=tmp_path / "labels.txt")
    assert archive.name == "pets-v2.0.mar"
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(archive) as mar:
        mar.extractall(unpacked)
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
    assert manifest["model"]["modelName"] == "pets" and manifest["model"]["modelVersion"] == "2.0"
    info = json.loads((unpacked / "model.json").read_text())
    assert info["labels"] == ["__background__", "cat", "dog"]
    assert info["source"] == "local file finetuned.pth"
    assert (unpacked / "objdetect" / "pipeline.py").exists() and not list(unpacked.rglob("__pycache__"))

    detector = Detector.load(unpacked, Settings.load({}, {}), name="pets", version="2.0")
    assert detector.limits.labels == ("cat", "dog")
    response = detector([Request({"body": encode(Image.new("RGB", (320, 240), (90, 120, 30)), "JPEG")})])[0]
    body = json.loads(response.body)
    assert response.status == 200 and (body["model"], body["version"]) == ("pets", "2.0")
    for detection in detector([Request({"body": encode(Image.new("RGB", (320, 240)), "PNG"),
                                        "threshold": b"0"})]):
        assert all(d["label"] in ("cat", "dog") for d in json.loads(detection.body)["detections"])
