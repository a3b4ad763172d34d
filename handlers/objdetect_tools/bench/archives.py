"""What the servers run: the stock and our archives at a configuration, and our handler's variants."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from model_archiver.model_archiver_config import ModelArchiverConfig
from model_archiver.model_packaging import generate_model_archive

from objdetect import registry, shapes_net
from objdetect.settings import ENV_PREFIX, EXACT_PATH
from objdetect_serving.archive import archive_path, build_mar
from objdetect_serving.paths import MODEL_CONFIG

from . import stock_model
from .load import REQUEST_TIMEOUT_S
from .models import BenchModel
from .results import ServerConfig


def _settings(**values) -> dict[str, str]:
    """objdetect settings as the environment overrides them."""
    return {f"{ENV_PREFIX}{name.upper()}": str(value).lower() for name, value in values.items()}


# Our handler with some of its optimizations switched off (objdetect settings, by environment):
# measured at the configuration `ours` chose for the cell, taking turns with ours once more, so only
# the switch differs. ours_again switches nothing off: ours in one more server, the control; a
# switch's ratio no farther from 1 than ours/ours_again is noise.
EXTRA_VARIANTS: dict[str, dict[str, str]] = {
    "ours_again": {},
    "ours_exact": _settings(**EXACT_PATH),
    "ours_torch": _settings(runtime="torch"),
    "ours_fp32": _settings(cpu_precision="fp32"),
    "ours_torchvision_roialign": _settings(gather_roialign=False),
    "ours_default_malloc": _settings(keep_freed_memory=False),
    "ours_no_draft": _settings(jpeg_draft=False),
    "ours_no_pre_resize": _settings(pre_resize=False),
    "ours_no_channels_last": _settings(channels_last=False),
    "ours_no_fold_batch_norms": _settings(fold_batch_norms=False),
}


@dataclass(frozen=True)
class Archive:
    name: str  # the model's name in /predictions/<name>
    file: str  # in the model store


def candidates(configs: list[ServerConfig], concurrency: int) -> list[ServerConfig]:
    """At concurrency 1, one worker without batching: a lone request never fills a batch, and a
    second worker only halves the threads of the busy one."""
    if concurrency > 1:
        return configs
    lone = [c for c in configs if c.workers == 1 and c.batch_size == 1]
    return lone or configs


def model_config(config: ServerConfig) -> dict:
    """TorchServe's model-config.yaml fields for `config`."""
    return {"minWorkers": config.workers, "maxWorkers": config.workers, "batchSize": config.batch_size,
            "maxBatchDelay": config.max_batch_delay_ms, "responseTimeout": REQUEST_TIMEOUT_S}


def build_ours(model: BenchModel, config: ServerConfig, store: Path) -> Archive:
    """Our archive, with the repository's model-config.yaml (handler settings included) at `config`."""
    settings = yaml.safe_load(MODEL_CONFIG.read_text())
    settings.update(model_config(config))
    path = store / f"ours-{config.label}-config.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    name, version = f"ours_{config.label}", "1.0"
    build_mar(model.name, store, name, version, weights=model.weights, config=path)
    return Archive(name, archive_path(store, name, version).name)


def build_stock(model: BenchModel, config: ServerConfig, store: Path) -> Archive:
    """The stock handler's archive, as torch-model-archiver --handler object_detector makes it:
    stock_model.py with its JSON (and shapes_net.py for the embedded model), index_to_name.json."""
    name = f"stock_{config.label}"
    with tempfile.TemporaryDirectory() as staging:
        staging = Path(staging)
        spec = staging / stock_model.SPEC_FILE
        spec.write_text(json.dumps({"architecture": model.name, "num_classes": len(model.labels)}))
        index_to_name = staging / "index_to_name.json"
        index_to_name.write_text(json.dumps({str(i): label for i, label in enumerate(model.labels)}))
        extra = [index_to_name, spec]
        if model.name == registry.EMBEDDED:
            extra.append(Path(shapes_net.__file__))
        config_file = staging / "model-config.yaml"
        config_file.write_text(yaml.safe_dump(model_config(config), sort_keys=False))
        generate_model_archive(ModelArchiverConfig(
            model_name=name, version="1.0", handler="object_detector", model_file=stock_model.__file__,
            serialized_file=str(model.weights), extra_files=",".join(str(p) for p in extra),
            config_file=str(config_file), export_path=str(store), force=True,
        ))
    return Archive(name, f"{name}.mar")
