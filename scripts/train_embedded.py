"""Train the embedded shapes detector from scratch on generated images, within a time budget.

    python scripts/train_embedded.py --minutes 20 --out model_store/embedded/shapes_detector.pt

The learning rate follows a cosine over the *time* budget (not a step count), so the schedule
ends where the budget does on any machine. Training images come from seeds 0, 1, 2, ...;
evaluation uses seeds from EVAL_SEED on, which training never reaches.
"""

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torchvision.transforms.functional import pil_to_tensor

from objdetect import synthetic
from objdetect.shapes_net import build_shapes_detector

EVAL_SEED = 1_000_000_000
TRAIN_MAX_SHAPES = 16  # more labelled shapes per image than the contract's 6: more signal per step, same compute


def training_batch(first_seed: int, size: int):
    images, targets = [], []
    for seed in range(first_seed, first_seed + size):
        sample = synthetic.generate(seed, max_shapes=TRAIN_MAX_SHAPES)
        images.append(pil_to_tensor(sample.image).float() / 255)
        targets.append({
            "boxes": torch.tensor(sample.boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([synthetic.SHAPE_CLASSES.index(l) + 1 for l in sample.labels], dtype=torch.int64),
        })
    return images, targets


def evaluate(model, first_seed: int, count: int) -> float:
    """mAP@0.5 on `count` generated images (torchmetrics, COCO-style, as the serving test measures)."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_thresholds=[0.5])
    model.eval()
    with torch.inference_mode():
        for seed in range(first_seed, first_seed + count):
            sample = synthetic.generate(seed)
            output = model([pil_to_tensor(sample.image).float() / 255])[0]
            metric.update([output], [{
                "boxes": torch.tensor(sample.boxes).reshape(-1, 4),
                "labels": torch.tensor([synthetic.SHAPE_CLASSES.index(l) + 1 for l in sample.labels]),
            }])
    model.train()
    return float(metric.compute()["map"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=19.0, help="training time budget (evaluation not counted)")
    parser.add_argument("--out", type=Path, default=Path("model_store/embedded/shapes_detector.pt"))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-images", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

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


if __name__ == "__main__":
    sys.exit(main())
