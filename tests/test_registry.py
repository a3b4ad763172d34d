"""Models and weights: the architectures, verified downloads into the cache, labels files and checkpoints."""

import functools
import hashlib
import http.server
import threading
from types import SimpleNamespace

import pytest
import torch

from objdetect import registry

pytestmark = pytest.mark.unit


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
    weights = SimpleNamespace(url=f"{base_url}/{name}")
    return registry.Architecture("fake", registry.build_shapes_detector, ("__background__", "thing"), coco_weights=weights)


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
    with pytest.raises(RuntimeError, match='invalid hash value \\(expected "00000000"'):
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


@pytest.mark.parametrize("name", list(registry.ARCHITECTURES))
def test_every_registered_architecture_builds_for_its_labels(name):
    arch = registry.ARCHITECTURES[name]
    assert arch.labels[0] == registry.BACKGROUND and len(set(arch.labels)) > 1
    if arch.coco_weights is not None:
        assert len(arch.labels) == 91 and "person" in arch.labels and arch.embedded_weights is None
    else:
        assert arch.embedded_weights  # its weights are ours, in the model store
    model = arch.build(num_classes=len(arch.labels)).eval()
    assert model.roi_heads.box_predictor.cls_score.out_features == len(arch.labels)
    with torch.inference_mode():
        (output,) = model([torch.rand(3, 96, 128)])
    assert set(output) == {"boxes", "scores", "labels"}


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
