"""Build a TorchServe model archive (.mar) for any model in the registry (`make mar`).

    python scripts/build_mar.py --model fasterrcnn_resnet50_fpn_v2            # published COCO weights
    python scripts/build_mar.py --model shapes                                # the embedded model
    python scripts/build_mar.py --model fasterrcnn_resnet50_fpn_v2 --weights ft.pt --labels labels.txt
    python scripts/build_mar.py --verify model_store/detector-v1.0.mar [--expect-runtime openvino]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from objdetect import registry
from objdetect_serving.archive import build_mar, verify
from objdetect_serving.paths import MODEL_CONFIG, MODEL_STORE


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=registry.EMBEDDED, choices=sorted(registry.ARCHITECTURES))
    parser.add_argument("--weights", type=Path, help="a local checkpoint instead of the published weights")
    parser.add_argument("--labels", type=Path, help="labels file for a fine-tuned checkpoint: one class per line")
    parser.add_argument("--name", default="detector", help="the model name in /predictions/<name>")
    parser.add_argument("--version", default="1.0")
    parser.add_argument("--config", type=Path, default=MODEL_CONFIG, help="TorchServe model-config.yaml")
    parser.add_argument("--out-dir", type=Path, default=MODEL_STORE)
    parser.add_argument("--verify", type=Path, metavar="ARCHIVE",
                        help="build nothing: load ARCHIVE as a worker would and run a forward pass")
    parser.add_argument("--expect-runtime", choices=("torch", "openvino"), help="with --verify: the runtime it must get")
    args = parser.parse_args()
    if args.verify:
        runtime = verify(args.verify)
        print(f"verified {args.verify}: a forward pass with runtime {runtime}")
        return 0 if args.expect_runtime is None or runtime.startswith(args.expect_runtime) else 1
    try:
        path = build_mar(args.model, args.out_dir, args.name, args.version, args.weights, args.labels, args.config)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"build_mar: {error}", file=sys.stderr)
        return 1
    print(f"built {path} ({path.stat().st_size / 1e6:.1f} MB): {args.model}, {args.name} v{args.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
