"""Model archives: what `make mar` packs, and that a checkpoint that does not fit fails while building."""

import json
import zipfile
from dataclasses import replace

import pytest
import torch
from PIL import Image

from objdetect import registry
from objdetect.pipeline import Detector, Request
from objdetect.synthetic import encode
from objdetect_serving.archive import build_mar, default_weights

pytestmark = pytest.mark.unit


def test_the_embedded_model_archives_its_committed_weights_and_its_openvino_parts(tmp_path):
    weights, source = default_weights(registry.architecture("shapes"), download=False)
    assert weights.is_file() and weights.parent.name == "embedded" and "embedded" in source
    archive = build_mar("shapes", tmp_path, "detector", "1.0", download=False)
    with zipfile.ZipFile(archive) as mar:
        info = json.loads(mar.read("model.json"))
        assert mar.read(weights.name) == weights.read_bytes()
        assert {f"openvino/{part}.{kind}" for part in ("backbone", "rpn", "box_head") for kind in ("xml", "bin")} \
            <= set(mar.namelist())
    assert info == {"architecture": "shapes", "labels": list(registry.architecture("shapes").labels),
                    "weights": weights.name, "source": source}


def test_a_checkpoint_that_does_not_fit_the_architecture_fails_at_build(tmp_path):
    torch.save({"backbone.nonsense": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(RuntimeError, match="state_dict"):
        build_mar("fasterrcnn_mobilenet_v3_large_320_fpn", tmp_path, weights=tmp_path / "wrong.pt")


def test_a_fine_tuned_checkpoint_with_labels_becomes_a_working_archive(tmp_path, default_settings):
    torch.manual_seed(0)
    model = registry.architecture("fasterrcnn_mobilenet_v3_large_320_fpn").build(num_classes=3)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[2] += 5  # random weights: make it detect "dog"
    torch.save({"model": model.state_dict()}, tmp_path / "finetuned.pth")
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    archive = build_mar("fasterrcnn_mobilenet_v3_large_320_fpn", tmp_path / "store", "pets", "2.0",
                        weights=tmp_path / "finetuned.pth", labels=tmp_path / "labels.txt", openvino=False)
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

    assert not (unpacked / "openvino").exists()  # asked for without; the runtime is another test's subject
    detector = Detector.load(unpacked, replace(default_settings, runtime="torch"), name="pets", version="2.0")
    assert detector.limits.labels == ("cat", "dog")
    response = detector([Request({"body": encode(Image.new("RGB", (320, 240), (90, 120, 30)), "JPEG")})])[0]
    body = json.loads(response.body)
    assert response.status == 200 and (body["model"], body["version"]) == ("pets", "2.0")
    (answer,) = detector([Request({"data": encode(Image.new("RGB", (320, 240)), "PNG"), "threshold": b"0"})])
    labels = [d["label"] for d in json.loads(answer.body)["detections"]]
    assert labels and set(labels) <= {"cat", "dog"} and "dog" in labels
