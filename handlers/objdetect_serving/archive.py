"""Model archives (.mar) for any model in the registry: what TorchServe loads.

The archive holds the handler, the objdetect package, the weights, model.json (architecture,
labels, provenance) and model-config.yaml (TorchServe's batching and workers, and the handler's
settings); where OpenVINO is installed, also the model's OpenVINO parts (objdetect.openvino_runtime),
converted here once because tracing takes seconds a worker should not spend. The weights are
loaded into the architecture while building, so a checkpoint that does not fit fails here, not
in a worker.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch
import yaml

from objdetect import openvino_runtime, registry
from objdetect.pipeline import Detector
from objdetect.settings import Settings

from .paths import HANDLER, MODEL_CONFIG, MODEL_STORE, PIPELINE_PACKAGE


def archive_path(out_dir: Path, name: str, version: str) -> Path:
    return Path(out_dir) / f"{name}-v{version}.mar"


def default_weights(arch: registry.Architecture, download: bool = True) -> tuple[Path, str]:
    """The weights an archive of `arch` gets when none are given, and where they came from: the
    embedded model's file in the model store, or torchvision's published COCO weights."""
    if arch.embedded_weights:
        return MODEL_STORE / arch.embedded_weights, "embedded (make train-embedded)"
    return registry.published_weights(arch, download=download), arch.coco_weights.url


def build_mar(model: str, out_dir: Path, name: str = "detector", version: str = "1.0",
              weights: Path | None = None, labels: Path | None = None,
              config: Path = MODEL_CONFIG, download: bool = True, openvino: bool = True) -> Path:
    """Builds out_dir/<name>-v<version>.mar of `model` (a registry name) and returns its path.
    `openvino`: with the model's OpenVINO parts, where OpenVINO is installed."""
    # Imported here: a serving environment (the image's) verifies archives without the archiver.
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    arch = registry.architecture(model)
    if weights is None:
        weights, source = default_weights(arch, download)
    else:
        source = f"local file {Path(weights).name}"
    class_names = registry.read_labels(labels) if labels else list(arch.labels)
    # Fails here, loudly, when the checkpoint does not fit the architecture or the labels.
    built = registry.build_model(model, class_names, registry.load_state_dict(weights))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as staging:
        staging = Path(staging)
        shutil.copytree(PIPELINE_PACKAGE, staging / "objdetect", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        info = {"architecture": model, "labels": class_names, "weights": Path(weights).name, "source": source}
        (staging / registry.MODEL_INFO).write_text(json.dumps(info, indent=2))
        if openvino and openvino_runtime.available():
            parts = openvino_runtime.convert(built, torch.full((3, 480, 640), 0.5))
            openvino_runtime.save(*parts, staging / openvino_runtime.IR_FOLDER)
        # The archiver copies everything into <tempdir>/<model name> (removing what is there first),
        # which every build of that name on the machine would share: this build's is its own.
        shared_tempdir, tempfile.tempdir = tempfile.tempdir, str(staging)
        try:
            generate_model_archive(ModelArchiverConfig(
                model_name=name, version=version, handler=str(HANDLER), serialized_file=str(weights),
                extra_files=str(staging), config_file=str(config), export_path=str(staging), force=True,
            ))
        finally:
            tempfile.tempdir = shared_tempdir
        target = archive_path(out_dir, name, version)
        shutil.move(staging / f"{name}.mar", target)
    return target


def verify(archive: Path) -> str:
    """Loads `archive` as a worker would (its handler settings, then the environment's) and runs a
    forward pass: the image build's proof that its pruned venv serves it. Returns the runtime used."""
    with tempfile.TemporaryDirectory() as unpacked, zipfile.ZipFile(archive) as mar:
        mar.extractall(unpacked)
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
        config = yaml.safe_load(mar.read(manifest["configFile"]))
        detector = Detector.load(unpacked, Settings.load(config.get("handler"), os.environ))
        detector.warm_up()
        return detector.runtime
