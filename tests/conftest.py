"""Shared fixtures: images, the embedded model, its archive, and one real TorchServe per session."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from build_mar import EMBEDDED_WEIGHTS, build_mar  # noqa: E402
from server import Ports, TorchServe  # noqa: E402

from objdetect import registry, synthetic  # noqa: E402
from objdetect.settings import SPEED_SWITCHES, Settings  # noqa: E402

SHAPE_LABELS = [registry.BACKGROUND, *synthetic.SHAPE_CLASSES]


def encode(image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def shapes_model():
    """The committed embedded model, as torchvision's FasterRCNN in eval mode."""
    state_dict = registry.load_state_dict(EMBEDDED_WEIGHTS)
    return registry.build_model(registry.EMBEDDED, SHAPE_LABELS, state_dict)


@pytest.fixture(scope="session")
def default_settings() -> Settings:
    return Settings.load({}, {})


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    """A model store with the embedded model's archive ("detector"), the same model on the exact
    path ("exact": no JPEG draft, no uint8 pre-resize), and one whose operator settings trust
    loopback URLs and require an API key ("guarded")."""
    store = tmp_path_factory.mktemp("model_store")
    build_mar(registry.EMBEDDED, store, "detector", "1.0",
              config=_test_config(store, "detector", "batchSize: 4\nmaxBatchDelay: 300\n"))
    build_mar(registry.EMBEDDED, store, "exact", "1.0", config=exact_config(store))
    guarded = _test_config(store, "guarded", "batchSize: 1\n", handler=(
        "handler:\n"
        "  url_trusted_networks: [127.0.0.0/8]\n"
        "  url_allowed_hosts: [127.0.0.1]\n"
        "  api_keys: [test-key]\n"))
    build_mar(registry.EMBEDDED, store, "guarded", "1.0", config=guarded)
    return store


def exact_config(store: Path) -> Path:
    return _test_config(store, "exact", "batchSize: 1\n",
                        handler="handler:\n" + "".join(f"  {name}: false\n" for name in SPEED_SWITCHES))


def _test_config(store: Path, name: str, batching: str, handler: str = "") -> Path:
    """The repository's model-config.yaml with the test's batching (a long delay makes a batch of
    concurrent requests certain) and handler settings."""
    text = (ROOT / "handlers" / "model-config.yaml").read_text()
    text = "\n".join(line for line in text.splitlines() if not line.startswith(("batchSize", "maxBatchDelay")))
    if handler:
        text = text[: text.index("handler:")] + handler
    path = store / f"{name}-config.yaml"
    path.write_text(text + "\n" + batching)
    return path


@pytest.fixture(scope="session")
def server(model_store):
    """One real TorchServe on free loopback ports for the whole session, always stopped."""
    ts = TorchServe(model_store, {"detector": "detector-v1.0.mar", "exact": "exact-v1.0.mar",
                                  "guarded": "guarded-v1.0.mar"}, Ports.free())
    with ts:
        yield ts


@pytest.fixture()
def sample_png() -> bytes:
    return encode(synthetic.generate(11).image)

