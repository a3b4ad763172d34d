"""`make serve`: build the model archive and serve it with TorchServe on 127.0.0.1 until Ctrl-C.

Which model: the one MODEL= names; otherwise COCO weights when they are cached or downloadable
(fasterrcnn_resnet50_fpn_v2 on a GPU, fasterrcnn_mobilenet_v3_large_fpn on a CPU); otherwise
the embedded shapes model. The log says which, and why.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from objdetect import registry, synthetic

from .archive import build_mar
from .paths import MODEL_STORE, ROOT
from .drain import DrainPolicy
from .java import JavaNotFound, java_environment
from .torchserve import Ports, TorchServe, run_until_signal


def choose_model(requested: str | None, weights: Path | None) -> tuple[str, str]:
    """(architecture, why it was chosen)."""
    if requested:
        return requested, f"MODEL={requested} asked for it" + (f" with WEIGHTS={weights}" if weights else "")
    coco = "fasterrcnn_resnet50_fpn_v2" if torch.cuda.is_available() else "fasterrcnn_mobilenet_v3_large_fpn"
    arch = registry.architecture(coco)
    cached = registry.cached_weights_path(arch)
    if cached.exists():
        return coco, f"its COCO weights are cached at {cached}"
    try:
        registry.published_weights(arch, download=True)
    except Exception as error:  # noqa: BLE001 - any failure means: not available, fall back
        return registry.EMBEDDED, (f"COCO weights for {coco} are not cached at {cached} and could not be "
                                   f"downloaded ({type(error).__name__}: {error}); the embedded model "
                                   f"detects {', '.join(synthetic.SHAPE_CLASSES)}")
    return coco, f"its COCO weights were downloaded to {cached}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=f"one of {', '.join(registry.ARCHITECTURES)}")
    parser.add_argument("--weights", type=Path, help="a local checkpoint for --model")
    parser.add_argument("--labels", type=Path, help="labels file for a fine-tuned checkpoint")
    parser.add_argument("--name", default="detector")
    Ports.add_arguments(parser)
    DrainPolicy.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.weights and not args.model:
        parser.error("--weights needs --model (the architecture the checkpoint was trained with)")

    try:
        java_environment()
    except JavaNotFound as error:  # said before the archive is built, not after
        print(f"serve: {error}", file=sys.stderr)
        return 1
    model, reason = choose_model(args.model, args.weights)
    print(f"serve: serving {model}: {reason}", flush=True)
    try:
        archive = build_mar(model, MODEL_STORE, args.name, weights=args.weights, labels=args.labels)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"serve: cannot build the model archive: {error}", file=sys.stderr)
        return 1
    server = TorchServe(MODEL_STORE, {args.name: archive.name}, Ports.from_arguments(args), log_dir=ROOT / "logs")

    def show_example() -> None:
        example = server.workdir / "example.jpg"
        synthetic.generate(seed=7).image.save(example, quality=92)
        print(f"serve: {args.name} is READY. Try:\n"
              f"  curl -T {example} {server.url()}/predictions/{args.name}\n"
              f"  curl -H 'Content-Type: application/json' -d '{{\"url\": \"https://...\", \"threshold\": 0.3}}' "
              f"{server.url()}/predictions/{args.name}\n"
              f"serve: Ctrl-C stops it at once; SIGTERM drains it first.", flush=True)

    return run_until_signal(server, "serve", show_example, DrainPolicy.from_arguments(args))
