"""Train the embedded shapes detector from scratch on generated images, within a time budget;
and measure a detector's mAP@0.5 on generated images (here and in the tests).

    python scripts/train_embedded.py --minutes 20 --out model_store/embedded/shapes_detector.pt

The learning rate follows a cosine over the *time* budget (not a step count), so the schedule
ends where the budget does on any machine. Training images come from seeds 0, 1, 2, ...;
evaluation uses seeds from EVAL_SEED on, which training never reaches.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torchvision.transforms.functional import pil_to_tensor

from objdetect import synthetic
from objdetect.shapes_net import build_shapes_detector
from objdetect_serving.paths import MODEL_STORE

EVAL_SEED = 1_000_000_000
TRAIN_MAX_SHAPES = 16  # more labelled shapes per image than the contract's 6: more signal per step, same compute


def training_batch(first_seed: int, size: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    samples = [synthetic.generate(seed, max_shapes=TRAIN_MAX_SHAPES) for seed in range(first_seed, first_seed + size)]
    return [pil_to_tensor(s.image).float() / 255 for s in samples], [s.target() for s in samples]


def map_at_50(detections: Iterable[Mapping[str, torch.Tensor]], samples: Iterable[synthetic.Sample]) -> float:
    """mAP@0.5 (torchmetrics, COCO-style) of detections ({"boxes", "scores", "labels"} per image,
    labels being class ids) against the samples' shapes."""
    from torchmetrics.detection import MeanAveragePrecision  # a development dependency

    metric = MeanAveragePrecision(iou_thresholds=[0.5])
    for found, sample in zip(detections, samples, strict=True):
        metric.update([dict(found)], [sample.target()])
    return float(metric.compute()["map"])


def evaluate(model: torch.nn.Module, first_seed: int, count: int) -> float:
    """The model's mAP@0.5 in this process on `count` generated images from `first_seed` on."""
    samples = [synthetic.generate(seed) for seed in range(first_seed, first_seed + count)]
    model.eval()
    with torch.inference_mode():
        outputs = [model([pil_to_tensor(sample.image).float() / 255])[0] for sample in samples]
    model.train()
    return map_at_50(outputs, samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=19.0, help="training time budget (evaluation not counted)")
    parser.add_argument("--out", type=Path, default=MODEL_STORE / "embedded" / "shapes_detector.pt")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-images", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = build_shapes_detector()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    budget = args.minutes * 60
    warmup_steps = 200
    start = time.monotonic()
    step = 0
    while (elapsed := time.monotonic() - start) < budget:
        progress = elapsed / budget
        lr = args.lr * min(1.0, (step + 1) / warmup_steps) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, targets = training_batch(step * args.batch_size, args.batch_size)
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        if step % 50 == 0:
            parts = " ".join(f"{k.removeprefix('loss_')}={v.item():.3f}" for k, v in losses.items())
            print(f"step {step:5d}  {elapsed / 60:5.1f} min  lr={lr:.2e}  loss={loss.item():.3f}  {parts}", flush=True)
        step += 1

    print(f"trained {step} steps ({step * args.batch_size} images) in {(time.monotonic() - start) / 60:.1f} min", flush=True)
    score = evaluate(model, EVAL_SEED, args.eval_images)
    print(f"mAP@0.5 on {args.eval_images} held-out images: {score:.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # fp16 halves the file (~1 MB) at no measurable mAP cost; loading casts back to fp32.
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    return 0
