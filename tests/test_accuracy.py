"""What the served model answers: equal to torchvision's own forward pass, and accurate (mAP@0.5)."""

import io
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from objdetect import openvino_runtime, registry, synthetic
from objdetect.synthetic import encode
from objdetect_serving.archive import build_mar
from objdetect_tools.training import map_at_50

pytestmark = pytest.mark.integration

# Seeds from here on were never drawn by training (seeds 0 up) nor by its evaluation (1e9 up).
TEST_SEED = 2_000_000_000
# The committed embedded model's mAP@0.5 on TEST_SEED's 100 images through the API (README). It is
# deterministic up to float rounding (batches of other sizes pad differently), so a fall of more
# than MAP_MARGIN is a regression of the model or of the request path, not noise.
MEASURED_MAP, MAP_MARGIN = 0.990, 0.02


def serve(server, data: bytes, model: str = "detector", **options) -> dict:
    response = requests.post(f"{server.url()}/predictions/{model}", files={"data": data},
                             data={k: str(v) for k, v in options.items()}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("seed, fmt", [(TEST_SEED + 11, "PNG"), (TEST_SEED + 12, "JPEG"),
                                       (TEST_SEED + 13, "PNG"), (TEST_SEED + 14, "JPEG")])
def test_served_detections_on_the_exact_path_equal_torchvisions_own_forward_pass(server, shapes_model, seed, fmt):
    data = encode(synthetic.generate(seed).image, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    with torch.inference_mode():
        image = pil_to_tensor(Image.open(io.BytesIO(data)).convert("RGB")).float() / 255
        expected = shapes_model([image])[0]
    served = serve(server, data, model="exact", threshold=0)["detections"]

    assert len(served) == len(expected["scores"]) > 0
    assert [d["class_id"] for d in served] == expected["labels"].tolist()
    assert torch.allclose(torch.tensor([d["score"] for d in served]), expected["scores"], atol=1e-4)
    assert torch.allclose(torch.tensor([d["box"] for d in served]), expected["boxes"], atol=0.5)


@pytest.fixture(scope="module")
def coco_architecture(server, model_store, exact_model_config, tmp_path_factory):
    """torchvision's fasterrcnn_mobilenet_v3_large_320_fpn with seeded random weights (no COCO weights
    can be downloaded here), its "person" logit raised so that it detects something, registered on
    the running server through the management API as model "coco320"."""
    torch.manual_seed(0)
    model = registry.architecture("fasterrcnn_mobilenet_v3_large_320_fpn").build(num_classes=91).eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1] += 4.0
    weights = tmp_path_factory.mktemp("coco320") / "random.pth"
    torch.save(model.state_dict(), weights)
    archive = build_mar("fasterrcnn_mobilenet_v3_large_320_fpn", model_store, "coco320", "1.0", weights=weights,
                        config=exact_model_config)
    management = server.url("management")
    registered = requests.post(f"{management}/models", params={"url": archive.name, "initial_workers": 1,
                                                               "synchronous": "true"}, timeout=180)
    assert registered.status_code == 200, registered.text
    yield model
    requests.delete(f"{management}/models/coco320/1.0", timeout=60)


@pytest.mark.parametrize("seed", [TEST_SEED + 21, TEST_SEED + 22, TEST_SEED + 23])
def test_a_torchvision_coco_architecture_is_served_exactly_too(server, coco_architecture, seed):
    data = encode(synthetic.generate(seed).image)
    with torch.inference_mode():
        expected = coco_architecture([pil_to_tensor(Image.open(io.BytesIO(data)).convert("RGB")).float() / 255])[0]
    response = requests.post(f"{server.url()}/predictions/coco320", files={"data": data},
                             data={"threshold": "0"}, timeout=120)
    assert response.status_code == 200, response.text
    served = response.json()["detections"]
    assert len(served) == len(expected["scores"]) > 0
    labels = registry.architecture("fasterrcnn_mobilenet_v3_large_320_fpn").labels
    assert [d["label"] for d in served] == [labels[i] for i in expected["labels"].tolist()]
    assert torch.allclose(torch.tensor([d["score"] for d in served]), expected["scores"], atol=1e-4)
    assert torch.allclose(torch.tensor([d["box"] for d in served]), expected["boxes"], atol=0.5)


def test_sizes_differ_across_the_equivalence_images():
    sizes = {synthetic.generate(TEST_SEED + i).image.size for i in (11, 12, 13, 14, 21, 22, 23)}
    assert len(sizes) == 7


def served_map(server, samples, model: str) -> float:
    """mAP@0.5 of `model`'s answers over HTTP for JPEGs of `samples` (torchmetrics, COCO-style)."""
    with ThreadPoolExecutor(4) as pool:  # concurrent, so batches of mixed sizes form as in production
        answers = list(pool.map(lambda s: serve(server, encode(s.image, "JPEG", quality=95), model=model,
                                                threshold=0.01), samples))
    return map_at_50(({"boxes": torch.tensor([d["box"] for d in answer["detections"]]).reshape(-1, 4),
                       "scores": torch.tensor([d["score"] for d in answer["detections"]]),
                       "labels": torch.tensor([d["class_id"] for d in answer["detections"]], dtype=torch.int64)}
                      for answer in answers), samples)


@pytest.mark.slow
def test_embedded_model_map_at_0_5_on_100_fresh_images_through_the_api(server, default_settings):
    """On images it never saw, served over HTTP with every speed optimization on (OpenVINO in bf16
    where the CPU has it, else fp32): the measured mAP@0.5 within MAP_MARGIN, and within 0.01 of the
    exact path's."""
    log = (server.log_dir / "model_log.log").read_text()
    _, runtime = openvino_runtime.choose(default_settings.runtime, default_settings.cpu_precision, torch.device("cpu"))
    assert f"objdetect detector v1.0 on cpu, runtime {runtime}" in log
    assert "objdetect exact v1.0 on cpu, runtime torch (runtime=torch)" in log
    samples = [synthetic.generate(TEST_SEED + i) for i in range(100)]
    fast, exact = served_map(server, samples, "detector"), served_map(server, samples, "exact")
    print(f"embedded model mAP@0.5 through the API on 100 fresh images: {fast:.3f} (exact path: {exact:.3f})")
    assert fast >= MEASURED_MAP - MAP_MARGIN and exact >= MEASURED_MAP - MAP_MARGIN
    assert abs(fast - exact) <= 0.01
