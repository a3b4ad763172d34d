"""objdetect-client: the command line on top of Client.

  objdetect-client detect photos/ --out results.jsonl              # a folder, recursively
  objdetect-client detect s3://bucket/prefix --list urls.txt --render boxes/
  objdetect-client evaluate --annotations instances.json --images val/
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from . import sources
from .client import DEFAULT_ENDPOINT, Client, Retry
from .coco import GroundTruth
from .result import Result
from .results_file import ResultsFile, load

API_KEY_ENV = "OBJDETECT_API_KEY"  # safer than --api-key: a key on a command line lands in shell history


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.command(args)
    except (sources.SourceError, OSError, ValueError, RuntimeError) as error:
        print(f"objdetect-client: {error}", file=sys.stderr)
        return 2


def detect(args: argparse.Namespace) -> int:
    if args.coco_out and not args.annotations:
        raise ValueError("--coco-out needs --annotations: COCO results are a ground truth's image and category ids")
    truth = GroundTruth(args.annotations) if args.annotations else None
    names = sources.expand([*args.sources, *(sources.read_list(args.list) if args.list else [])])
    if not names:
        raise ValueError("no images: give files, folders, URLs or s3:// prefixes (or --list)")
    return send(names, args, truth)[1]


def evaluate(args: argparse.Namespace) -> int:
    truth = GroundTruth(args.annotations)
    results, status = send([str(Path(args.images) / name) for name in truth.file_names()], args, truth)
    if status == 130:
        return status
    labels = {d.label for result in results.values() for d in result.detections}
    if labels and not labels & truth.categories.keys():
        print(f"objdetect-client: none of the model's labels ({', '.join(sorted(labels))}) is a category of "
              f"{args.annotations}", file=sys.stderr)
    failed = sum(not result.ok for result in results.values())
    print(json.dumps({"images": len(results), "failed": failed, **truth.evaluate(results.values())}))
    return status


def send(names: list[str], args: argparse.Namespace, truth: GroundTruth | None) -> tuple[dict[str, Result], int]:
    """Detects in every name not already in --out (with --resume), writing each result as it comes,
    with a progress bar and a summary on stderr, and --coco-out in `truth`'s ids. Returns every
    name's result and the exit status: 0, 1 when an image failed, 130 when interrupted."""
    client = Client(args.endpoint, args.model, args.version, args.api_key, args.timeout,
                    Retry(attempts=args.retries + 1))
    options = {"threshold": args.threshold, "classes": args.classes, "max_detections": args.max_detections}
    out = ResultsFile(Path(args.out), args.resume) if args.out else None
    pending = [name for name in names if out is None or name not in out.done]
    results: dict[str, Result] = {}
    failures: Counter[str] = Counter()
    started, interrupted = time.monotonic(), False

    if args.render:
        args.render.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(pending), unit="img", file=sys.stderr, disable=args.quiet or not pending, dynamic_ncols=True)
    try:
        stream = client.detect_many(pending, args.concurrency, render_to=args.render, **options)
        with contextlib.closing(stream):
            for result in stream:
                results[result.source] = result
                if out:
                    out.write(result)
                else:
                    print(json.dumps(result.to_json()), flush=True)
                if not result.ok:
                    failures[result.error] += 1
                    bar.set_postfix(failed=failures.total(), refresh=False)
                bar.update()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        if out:
            out.close()
    elapsed = time.monotonic() - started
    summary = (f"{len(results)} images in {elapsed:.1f} s ({len(results) / max(elapsed, 1e-9):.1f} images/s): "
               f"{len(results) - failures.total()} ok, {failures.total()} failed")
    if failures:
        summary += " (" + ", ".join(f"{code}: {count}" for code, count in failures.most_common()) + ")"
    if len(names) > len(pending):
        summary += f"; {len(names) - len(pending)} already in {args.out}"
    if interrupted:
        summary += f"; interrupted with {len(pending) - len(results)} not sent" + (
            ": --resume sends them" if out else "")
    print(f"objdetect-client: {summary}", file=sys.stderr)
    asked = set(names)
    everything = {name: result for name, result in load(out.path).items() if name in asked} if out else results
    if args.coco_out and not interrupted:
        Path(args.coco_out).write_text(json.dumps(truth.detections(everything.values())))
    return everything, 130 if interrupted else 1 if failures else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="objdetect-client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    detect_parser = commands.add_parser("detect", help="detect objects in images, folders, URLs, s3:// prefixes")
    detect_parser.add_argument("sources", nargs="*", metavar="SOURCE",
                               help="an image file, a folder (recursively, by extension), an http(s) URL "
                                    "(the server downloads it) or s3://bucket/prefix (your AWS credentials)")
    detect_parser.add_argument("--list", metavar="FILE", help="more sources, one per line (- for stdin)")
    detect_parser.add_argument("--annotations", metavar="INSTANCES_JSON",
                               help="a COCO ground truth whose image and category ids --coco-out uses")
    detect_parser.set_defaults(command=detect)
    evaluate_parser = commands.add_parser("evaluate", help="the deployed model's COCO mAP against annotations")
    evaluate_parser.add_argument("--annotations", required=True, metavar="INSTANCES_JSON")
    evaluate_parser.add_argument("--images", required=True, type=Path, metavar="DIR",
                                 help="the folder the annotations' file_name entries are relative to")
    evaluate_parser.set_defaults(command=evaluate)
    for sub, threshold in ((detect_parser, None), (evaluate_parser, 0.05)):  # mAP counts low scores too
        sub.add_argument("--endpoint", default=DEFAULT_ENDPOINT,
                         help=f"the server's inference URL (default {DEFAULT_ENDPOINT})")
        sub.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                         help=f"sent as X-API-Key (default ${API_KEY_ENV}, which keeps it out of shell history)")
        sub.add_argument("--model", default="detector")
        sub.add_argument("--version", help="a model version (default: the server's default version)")
        sub.add_argument("--threshold", type=float, default=threshold,
                         help="lowest score returned (default: the server's, 0.5" +
                              (f"; {threshold} here" if threshold else "") + ")")
        sub.add_argument("--classes", type=lambda text: [c.strip() for c in text.split(",") if c.strip()],
                         help="only these labels, comma-separated")
        sub.add_argument("--max-detections", type=int)
        sub.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
        sub.add_argument("--retries", type=int, default=4,
                         help="resends on connection errors, 503 and 507, with backoff and jitter (default 4)")
        sub.add_argument("--timeout", type=float, default=60, help="seconds per request (default 60)")
        sub.add_argument("--out", metavar="RESULTS_JSONL", help="one JSON line per image (default: stdout)")
        sub.add_argument("--resume", action="store_true",
                         help="skip images --out already holds (failures of the service are sent again)")
        sub.add_argument("--coco-out", metavar="FILE", help="COCO detection results JSON, for pycocotools")
        sub.add_argument("--render", type=Path, metavar="DIR", help="save each image with its boxes drawn, as JPEG")
        sub.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


if __name__ == "__main__":
    sys.exit(main())
