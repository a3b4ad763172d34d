"""Where the project's files are: the checkout, or /opt/objdetect in the image, which mirrors its layout."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG_PROPERTIES = ROOT / "config.properties"  # TorchServe's configuration
METRICS_CONFIG = Path(__file__).with_name("metrics.yaml")  # the metrics it declares
LOG_CONFIG = Path(__file__).with_name("log4j2.xml")  # its frontend's logging
MODEL_STORE = ROOT / "model_store"
HANDLER = ROOT / "handlers" / "detector_handler.py"
PIPELINE_PACKAGE = ROOT / "handlers" / "objdetect"  # packed into every archive
MODEL_CONFIG = ROOT / "handlers" / "model-config.yaml"  # TorchServe's per-archive configuration
