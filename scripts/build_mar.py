"""Build a TorchServe model archive (.mar) for any model in the registry.

    python scripts/build_mar.py --model fasterrcnn_resnet50_fpn_v2            # published COCO weights
    python scripts/build_mar.py --model shapes                                # the embedded model
    python scripts/build_mar.py --model fasterrcnn_resnet50_fpn_v2 --weights ft.pt --labels labels.txt

The archive holds the handler, the objdetect package, the weights, model.json (architecture,
labels, provenance) and model-config.yaml (TorchServe batching/workers and handler settings).
The weights are loaded into the architecture here, so a mismatch fails now, not in a worker.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from model_archiver.model_archiver_config import ModelArchiverConfig
from model_archiver.model_packaging import generate_model_archive

from objdetect import registry
from objdetect.pipeline import MODEL_INFO

ROOT = Path(__file__).resolve().parents[1]
HANDLER = ROOT / "handlers" / "detector_handler.py"
PACKAGE = ROOT / "handlers" / "objdetect"
MODEL_CONFIG = ROOT / "handlers" / "model-config.yaml"
EMBEDDED_WEIGHTS = ROOT / "model_store" / "embedded" / "shapes_detector.pt"


def archive_path(out_dir: Path, name: str, version: str) -> Path:
    return out_dir / f"{name}-v{version}.mar"


def build_mar(model: str, out_dir: Path, name: str = "detector", version: str = "1.0",
              weights: Path | None = None, labels: Path | None = None,
              config: Path = MODEL_CONFIG, download: bool = True) -> Path:
    arch = registry.architecture(model)
    if weights is None and arch.coco_weights is None:
        weights, source = EMBEDDED_WEIGHTS, "embedded (scripts/train_embedded.py)"
    elif weights is None:
        weights, source = registry.published_weights(arch, download=download), arch.coco_weights.url
    else:
        source = f"local file {Path(weights).name}"
    class_names = registry.read_labels(labels) if labels else arch.labels()
    # Fails here, loudly, when the checkpoint does not fit the architecture or the labels.
    registry.build_model(model, class_names, registry.load_state_dict(weights))

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as staging:
        staging = Path(staging)
        shutil.copytree(PACKAGE, staging / "objdetect", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        info = {"architecture": model, "labels": class_names, "weights": Path(weights).name, "source": source}
        (staging / MODEL_INFO).write_text(json.dumps(info, indent=2))
        generate_model_archive(ModelArchiverConfig(
            model_name=name, version=version, handler=str(HANDLER), serialized_file=str(weights),
            extra_files=str(staging), config_file=str(config), export_path=str(staging), force=True,
        ))
        target = archive_path(out_dir, name, version)
        shutil.move(staging / f"{name}.mar", target)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=registry.EMBEDDED, choices=sorted(registry.ARCHITECTURES))
    parser.add_argument("--weights", type=Path, help="a local checkpoint instead of the published weights")
    parser.add_argument("--labels", type=Path, help="labels file for a fine-tuned checkpoint: one class per line")
    parser.add_argument("--name", default="detector", help="the model name in /predictions/<name>")
    parser.add_argument("--version", default="1.0")
    parser.add_argument("--config", type=Path, default=MODEL_CONFIG, help="TorchServe model-config.yaml")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "model_store")
    args = parser.parse_args()
    try:
        path = build_mar(args.model, args.out_dir, args.name, args.version, args.weights, args.labels, args.config)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"build_mar: {error}", file=sys.stderr)
        return 1
    print(f"built {path} ({path.stat().st_size / 1e6:.1f} MB): {args.model}, {args.name} v{args.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
